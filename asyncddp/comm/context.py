"""Process bootstrap: who am I, who is on my machine, and which virtual topology is in force.

``init()`` builds the communicators every other module of ``asyncddp.comm`` uses: the world, a
machine-local communicator (a shared-memory split, or a fixed block of ranks when
``ASYNCDDP_RANKS_PER_MACHINE`` fakes a cluster on one box), and a cross-machine communicator of the
ranks that share a local rank. It also holds the current topology. mpi4py is imported inside
``init()`` only, because importing ``mpi4py.MPI`` initialises MPI and the launcher process that
imports ``asyncddp`` must never do that.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from asyncddp import exported_by
from asyncddp.comm.env import env_int
from asyncddp.comm.traffic import WINDOWS
from asyncddp.errors import NotInitializedError
from asyncddp.topology.analysis import in_neighbors, out_neighbors

__all__ = [*exported_by(__name__), "get_context"]

RANKS_PER_MACHINE_ENV = "ASYNCDDP_RANKS_PER_MACHINE"


@dataclass
class Context:
    """Everything ``init()`` sets up. Other comm modules reach it through ``get_context()``."""

    comm: Any  # MPI.Comm: the world this job runs on
    local_comm: Any  # ranks on the same machine
    cross_comm: Any  # ranks with the same local rank, one per machine
    machine_rank: int
    machine_size: int
    topology: nx.DiGraph
    is_weighted: bool
    machine_topology: nx.DiGraph
    machine_is_weighted: bool = False
    # Live one-sided windows by name; set_topology refuses to run while any exist.
    windows: dict[str, Any] = field(default_factory=dict)
    # Callbacks run by shutdown() before the communicators are freed (progress threads, windows).
    finalizers: list = field(default_factory=list)
    # Callables that return once this rank's queued and running ops have finished: set_topology
    # settles them before the ranks agree on a new graph.
    drains: list = field(default_factory=list)


_context: Context | None = None


def get_context() -> Context:
    """The live context, or a clear error when ``init()`` has not run."""
    if _context is None:
        raise NotInitializedError(
            "asyncddp is not initialised: call asyncddp.init() before any communication function"
        )
    return _context


def is_initialized() -> bool:
    return _context is not None


def _install_abort_hook(comm) -> None:
    """An unhandled exception on one rank aborts the whole job instead of hanging the others."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        if comm.Get_size() > 1:
            from asyncddp.comm.timeline import write_armed

            write_armed()  # Abort skips atexit, where the timeline of a script without shutdown() is written
            comm.Abort(1)

    sys.excepthook = hook


def _install_stack_dump() -> None:
    """SIGUSR1 prints every thread's Python stack to stderr and the rank carries on.

    ``asyncddp run --timeout`` sends SIGUSR1 through mpirun (Open MPI and MPICH forward it to
    every rank) before killing a job, so a hung job says where each rank was stuck. Left alone
    when the program already handles SIGUSR1, or off the main thread (signals can't be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:
        return
    # faulthandler writes to a file descriptor; under Jupyter/ipyparallel sys.stderr is a
    # Python object without one, and the process's own stderr is sys.__stderr__.
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.fileno()
        except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both
            continue
        faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True, chain=False)
        return


def _split_local(comm, launch_rank: int):
    """Ranks of this machine; ``launch_rank`` (the rank at launch) places a rank in a faked
    machine, so that after a loss the survivors stay on the machines they started on."""
    block = env_int(RANKS_PER_MACHINE_ENV, 0, minimum=1,
                    expected="a number of ranks per machine (a positive integer)")
    if block:
        return comm.Split(color=launch_rank // block, key=comm.Get_rank())
    from mpi4py import MPI

    return comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())


def machines(world, launch_rank: int) -> tuple:
    """``(local_comm, cross_comm, machine_rank, machine_size)`` of ``world``. Collective.

    Used by ``init()`` and by the recovery that rebuilds the world after ranks are lost.
    """
    from mpi4py import MPI

    local = _split_local(world, launch_rank)
    cross = world.Split(color=local.Get_rank(), key=world.Get_rank())
    is_leader = local.Get_rank() == 0
    num_machines = world.allreduce(1 if is_leader else 0)
    # Leaders are numbered by world rank; everyone on a machine takes its leader's number.
    leaders = world.Split(color=0 if is_leader else MPI.UNDEFINED, key=world.Get_rank())
    my_machine = leaders.Get_rank() if is_leader else None
    if leaders != MPI.COMM_NULL:
        leaders.Free()
    my_machine = local.bcast(my_machine, root=0)
    return local, cross, my_machine, num_machines


def init(topology: nx.DiGraph | None = None, is_weighted: bool = False, comm=None) -> None:
    """Initialise asyncddp on ``comm`` (default ``MPI.COMM_WORLD``). Collective.

    Safe to call again: a second call resets the topology to ``topology`` or the default
    ``exponential_two_graph(size())``.
    """
    global _context
    from asyncddp.comm.mpi_env import configure_components

    configure_components()  # before MPI_Init: mpi4py initialises MPI when MPI is first imported
    from mpi4py import MPI

    from asyncddp.topology.graphs import exponential_two_graph

    if _context is not None:
        set_topology(topology or exponential_two_graph(_context.comm.Get_size()), is_weighted)
        return
    world = comm if comm is not None else MPI.COMM_WORLD
    local, cross, my_machine, num_machines = machines(world, world.Get_rank())
    WINDOWS.reset()  # comm_stats() counts from init(): a new engine starts at zero, so do the windows
    _context = Context(
        comm=world,
        local_comm=local,
        cross_comm=cross,
        machine_rank=my_machine,
        machine_size=num_machines,
        topology=exponential_two_graph(world.Get_size()),
        is_weighted=False,
        machine_topology=exponential_two_graph(num_machines),
    )
    _install_abort_hook(world)
    _install_stack_dump()
    if topology is not None:
        set_topology(topology, is_weighted)


def shutdown() -> None:
    """Release everything ``init()`` made. MPI itself is finalised by mpi4py at exit."""
    global _context
    if _context is None:
        return
    ctx = _context
    for finalize in reversed(ctx.finalizers):
        finalize()
    ctx.finalizers.clear()
    ctx.local_comm.Free()
    ctx.cross_comm.Free()
    _context = None


def rank() -> int:
    return get_context().comm.Get_rank()


def size() -> int:
    return get_context().comm.Get_size()


def local_rank() -> int:
    return get_context().local_comm.Get_rank()


def local_size() -> int:
    return get_context().local_comm.Get_size()


def machine_rank() -> int:
    return get_context().machine_rank


def machine_size() -> int:
    return get_context().machine_size


def is_homogeneous() -> bool:
    """True when every machine runs the same number of ranks."""
    ctx = get_context()
    sizes = ctx.comm.allgather(ctx.local_comm.Get_size())
    return len(set(sizes)) == 1


def set_topology(graph: nx.DiGraph, is_weighted: bool = False) -> bool:
    """Make ``graph`` the topology used by neighbour ops. Collective: every rank returns the same
    value and holds the same graph afterwards (``asyncddp.comm.topology_change``).

    Waits first for this rank's nonblocking ops still in flight (they were issued for the old
    neighbours). Returns False everywhere, changing nothing, while one-sided windows exist (their
    neighbour buffers are laid out for the old topology). Raises ``TopologyError`` on every rank
    when any rank's graph is invalid (wrong nodes; with ``is_weighted``, a weight that is not a
    finite number) or the ranks passed different graphs.
    """
    from asyncddp.comm.topology_change import agree_on_graph

    ctx = get_context()
    if not agree_on_graph(ctx, graph, ctx.comm.Get_size(), is_weighted, "the topology", refuse_with_windows=True):
        return False
    ctx.topology = graph
    ctx.is_weighted = bool(is_weighted)
    return True


def load_topology() -> nx.DiGraph:
    return get_context().topology


def is_topology_weighted() -> bool:
    return get_context().is_weighted


def in_neighbor_ranks() -> list[int]:
    """Ranks that send to this rank in the current topology, ascending, self excluded."""
    ctx = get_context()
    return in_neighbors(ctx.topology, ctx.comm.Get_rank())


def out_neighbor_ranks() -> list[int]:
    """Ranks this rank sends to in the current topology, ascending, self excluded."""
    ctx = get_context()
    return out_neighbors(ctx.topology, ctx.comm.Get_rank())


def set_machine_topology(graph: nx.DiGraph, is_weighted: bool = False) -> bool:
    """The machine-level topology used by hierarchical neighbour averaging. Collective, with
    ``set_topology``'s rules (every rank of every machine passes the same graph), except that
    windows do not stop it; returns True."""
    from asyncddp.comm.topology_change import agree_on_graph

    ctx = get_context()
    agree_on_graph(ctx, graph, ctx.machine_size, is_weighted, "the machine topology", refuse_with_windows=False)
    ctx.machine_topology = graph
    ctx.machine_is_weighted = bool(is_weighted)
    return True


def load_machine_topology() -> nx.DiGraph:
    return get_context().machine_topology


def in_neighbor_machine_ranks() -> list[int]:
    ctx = get_context()
    return in_neighbors(ctx.machine_topology, ctx.machine_rank)


def out_neighbor_machine_ranks() -> list[int]:
    ctx = get_context()
    return out_neighbors(ctx.machine_topology, ctx.machine_rank)
