"""BlueFog 0.3's ``bluefog.torch`` API over asyncddp's core: ``import asyncddp.compat.bluefog as bf``.

Every function forwards to ``asyncddp.comm`` (no second implementation of any communication);
what this module adds is BlueFog's surface: its argument names and defaults, ``init(topology_fn)``,
integer handles for nonblocking ops (``poll``/``synchronize``/``wait`` and ``win_wait``/``win_poll``
map them onto our handle objects), ``BLUEFOG_NODES_PER_MACHINE``, and BlueFog's error type:
misuse raises ``ValueError`` (our ``CommError`` and ``NotInitializedError`` are re-raised as
``BlueFogError``, a ``ValueError`` that is also an ``AsyncDDPError``). Windows live in
``asyncddp.compat._bf_windows``, the ``BLUEFOG_TIMELINE`` file in ``asyncddp.compat._bf_timeline``,
optimizers and ``broadcast_parameters`` & co. in ``asyncddp.compat._bf_optimizers``; all are
re-exported here.
"""

from __future__ import annotations

import contextlib
import os

import networkx as nx
import torch

import asyncddp.comm as _core
from asyncddp.comm.context import RANKS_PER_MACHINE_ENV
from asyncddp.compat import _bf_timeline
from asyncddp.compat._bf_common import (BlueFogError, _bf_errors, _handle_lock, _handles, _lookup, _register,
                                        get_skip_negotiate_stage, set_skip_negotiate_stage)
from asyncddp.compat._bf_timeline import enqueue_activity

__all__ = [
    "BlueFogError", "init", "shutdown", "size", "rank", "local_size", "local_rank", "machine_size",
    "machine_rank", "is_homogeneous", "nccl_built", "mpi_threads_supported", "unified_mpi_window_model_supported",
    "set_skip_negotiate_stage", "get_skip_negotiate_stage", "set_topology", "load_topology",
    "is_topo_weighted", "in_neighbor_ranks", "out_neighbor_ranks", "set_machine_topology",
    "load_machine_topology", "is_machine_topo_weighted", "in_neighbor_machine_ranks",
    "out_neighbor_machine_ranks", "poll", "synchronize", "wait", "barrier",
    "allreduce", "allreduce_", "allreduce_nonblocking", "allreduce_nonblocking_",
    "broadcast", "broadcast_", "broadcast_nonblocking", "broadcast_nonblocking_",
    "allgather", "allgather_nonblocking", "neighbor_allgather", "neighbor_allgather_nonblocking",
    "neighbor_allreduce", "neighbor_allreduce_nonblocking", "hierarchical_neighbor_allreduce",
    "hierarchical_neighbor_allreduce_nonblocking", "suspend", "resume",
]  # fmt: skip

NODES_PER_MACHINE_ENV = "BLUEFOG_NODES_PER_MACHINE"


def _map_nodes_per_machine() -> None:
    """BlueFog's BLUEFOG_NODES_PER_MACHINE is our ASYNCDDP_RANKS_PER_MACHINE (read at init)."""
    nodes = os.environ.get(NODES_PER_MACHINE_ENV)
    if nodes:
        os.environ.setdefault(RANKS_PER_MACHINE_ENV, nodes)


# At import too: code that initialises asyncddp itself before calling bf.init() sees it.
_map_nodes_per_machine()


@_bf_errors
def poll(handle: int) -> bool:
    """True when ``synchronize(handle)`` would return at once."""
    return _core.poll(_lookup(handle, pop=False))


@_bf_errors
def synchronize(handle: int):
    """Wait for the op behind ``handle`` and return its result (the handle is then spent)."""
    return _core.synchronize(_lookup(handle, pop=True))


wait = synchronize


# --- basics -------------------------------------------------------------------------------------

@_bf_errors
def init(topology_fn=None, is_weighted: bool = False) -> None:
    """Start (or, called again, reset the topology of) the job. ``topology_fn(size)`` builds the
    topology; the default is ``ExponentialGraph(size)``. ``BLUEFOG_NODES_PER_MACHINE`` fakes
    machines of that many ranks (read at the first call, like BlueFog); ``BLUEFOG_TIMELINE=PREFIX``
    makes each rank write ``PREFIX{rank}.json`` (``asyncddp.compat._bf_timeline``)."""
    if not _core.is_initialized():
        _map_nodes_per_machine()
    _core.init()
    topology = topology_fn(_core.size()) if topology_fn is not None else None
    _core.init(topology=topology, is_weighted=is_weighted)
    # The engine's creation is collective: make it here, where every rank is, and not on the
    # first op (a timeline activity may be recorded by a single rank).
    from asyncddp.comm.engine import get_engine

    _bf_timeline.attach(get_engine())


def shutdown() -> None:
    resume()
    with _handle_lock:
        _handles.clear()
    _core.shutdown()


(size, rank, local_size, local_rank, machine_size, machine_rank, is_homogeneous) = (
    _bf_errors(fn) for fn in (_core.size, _core.rank, _core.local_size, _core.local_rank, _core.machine_size,
    _core.machine_rank, _core.is_homogeneous))


def nccl_built() -> bool:
    """True when a NCCL data path is possible here (torch built with NCCL and a GPU visible)."""
    return bool(torch.cuda.is_available() and torch.distributed.is_available()
                and torch.distributed.is_nccl_available())


@_bf_errors
def mpi_threads_supported() -> bool:
    """True when MPI granted ``MPI_THREAD_MULTIPLE`` (our comm thread then runs in background)."""
    _core.get_context()
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


@_bf_errors
def unified_mpi_window_model_supported() -> bool:
    """Whether MPI windows use the unified memory model. Local: probes a window on COMM_SELF, so a
    single rank may ask (BlueFog's answer is a local flag too)."""
    _core.get_context()
    from mpi4py import MPI

    win = MPI.Win.Allocate(8, comm=MPI.COMM_SELF)
    try:
        return win.Get_attr(MPI.WIN_MODEL) == MPI.WIN_UNIFIED
    finally:
        win.Free()


@_bf_errors
def suspend() -> None:
    """Queue nonblocking ops without starting them until ``resume()`` (BlueFog's pause of its
    background thread, meant for interactive sessions). Waiting on a handle still runs its op,
    so a blocking call made while suspended completes instead of hanging."""
    from asyncddp.comm.engine import get_engine

    _core.get_context()
    get_engine().pause()


def resume() -> None:
    """Start the ops queued since ``suspend()``."""
    from asyncddp.comm.context import is_initialized
    from asyncddp.comm.engine import get_engine

    if is_initialized():
        get_engine().resume()


# --- topology -----------------------------------------------------------------------------------

@_bf_errors
def set_topology(topology: nx.DiGraph | None = None, is_weighted: bool = False) -> bool:
    """Make ``topology`` (default ``ExponentialGraph(size)``) current; False while windows exist."""
    from asyncddp.topology.graphs import exponential_graph

    return _core.set_topology(topology if topology is not None else exponential_graph(_core.size()), is_weighted)


(load_topology, is_topo_weighted, in_neighbor_ranks, out_neighbor_ranks, load_machine_topology,
    in_neighbor_machine_ranks, out_neighbor_machine_ranks) = (
    _bf_errors(fn) for fn in (_core.load_topology, _core.is_topology_weighted, _core.in_neighbor_ranks,
    _core.out_neighbor_ranks, _core.load_machine_topology, _core.in_neighbor_machine_ranks,
    _core.out_neighbor_machine_ranks))


@_bf_errors
def set_machine_topology(topology: nx.DiGraph | None, is_weighted: bool = False) -> bool:
    """Make ``topology`` the machine topology (``None``: ``ExponentialGraph(machine_size())``)."""
    from asyncddp.topology.graphs import exponential_graph

    graph = topology if topology is not None else exponential_graph(_core.machine_size())
    return _core.set_machine_topology(graph, is_weighted)


@_bf_errors
def is_machine_topo_weighted() -> bool:
    return _core.get_context().machine_is_weighted


# --- collectives ----------------------------------------------------------------------------------

@_bf_errors
@enqueue_activity("ENQUEUE_ALLREDUCE", "allreduce")
def allreduce(tensor, average: bool = True, is_hierarchical_local: bool = False, name=None):
    return _core.allreduce(tensor, average=average, name=name, local=is_hierarchical_local)


@_bf_errors
@enqueue_activity("ENQUEUE_ALLREDUCE", "allreduce")
def allreduce_(tensor, average: bool = True, is_hierarchical_local: bool = False, name=None):
    return _core.allreduce_(tensor, average=average, name=name, local=is_hierarchical_local)


@_bf_errors
@enqueue_activity("ENQUEUE_ALLREDUCE", "allreduce")
def allreduce_nonblocking(tensor, average: bool = True, is_hierarchical_local: bool = False, name=None) -> int:
    return _register(_core.allreduce_nonblocking(tensor, average=average, name=name,
                                                 local=is_hierarchical_local))


@_bf_errors
@enqueue_activity("ENQUEUE_ALLREDUCE", "allreduce")
def allreduce_nonblocking_(tensor, average: bool = True, is_hierarchical_local: bool = False, name=None) -> int:
    return _register(_core.allreduce_nonblocking_(tensor, average=average, name=name,
                                                  local=is_hierarchical_local))


@_bf_errors
@enqueue_activity("ENQUEUE_BROADCAST", "broadcast")
def broadcast(tensor, root_rank: int, name=None):
    return _core.broadcast(tensor, root_rank, name=name)


@_bf_errors
@enqueue_activity("ENQUEUE_BROADCAST", "broadcast")
def broadcast_(tensor, root_rank: int, name=None):
    return _core.broadcast_(tensor, root_rank, name=name)


@_bf_errors
@enqueue_activity("ENQUEUE_BROADCAST", "broadcast")
def broadcast_nonblocking(tensor, root_rank: int, name=None) -> int:
    return _register(_core.broadcast_nonblocking(tensor, root_rank, name=name))


@_bf_errors
@enqueue_activity("ENQUEUE_BROADCAST", "broadcast")
def broadcast_nonblocking_(tensor, root_rank: int, name=None) -> int:
    return _register(_core.broadcast_nonblocking_(tensor, root_rank, name=name))


@_bf_errors
@enqueue_activity("ENQUEUE_ALLGATHER", "allgather")
def allgather(tensor, name=None):
    return _core.allgather(tensor, name=name)


@_bf_errors
@enqueue_activity("ENQUEUE_ALLGATHER", "allgather")
def allgather_nonblocking(tensor, name=None) -> int:
    return _register(_core.allgather_nonblocking(tensor, name=name))


@_bf_errors
def barrier() -> None:
    _core.barrier()


# --- neighbour ops ----------------------------------------------------------------------------------

@_bf_errors
@enqueue_activity("ENQUEUE_NEIGHBOR_ALLGATHER", "neighbor_allgather")
def neighbor_allgather(tensor, *, src_ranks=None, dst_ranks=None, enable_topo_check: bool = True, name=None):
    return _core.neighbor_allgather(tensor, src_ranks=src_ranks, dst_ranks=dst_ranks, name=name,
                                    enable_topo_check=enable_topo_check)


@_bf_errors
@enqueue_activity("ENQUEUE_NEIGHBOR_ALLGATHER", "neighbor_allgather")
def neighbor_allgather_nonblocking(tensor, *, src_ranks=None, dst_ranks=None, enable_topo_check: bool = True,
                                   name=None) -> int:
    return _register(_core.neighbor_allgather_nonblocking(
        tensor, src_ranks=src_ranks, dst_ranks=dst_ranks, name=name, enable_topo_check=enable_topo_check))


@_bf_errors
@enqueue_activity("ENQUEUE_NEIGHBOR_ALLREDUCE", "neighbor_allreduce")
def neighbor_allreduce(tensor, *, self_weight=None, src_weights=None, dst_weights=None,
                       enable_topo_check: bool = True, name=None):
    """out = self_weight·x + Σ src_weights[j]·(dst weight of j→me)·x_j; default: topology weights,
    or the exact uniform average (sum first, then divide) of an unweighted topology."""
    return _core.neighbor_allreduce(tensor, self_weight=self_weight, src_weights=src_weights,
                                    dst_weights=dst_weights, name=name, enable_topo_check=enable_topo_check)


@_bf_errors
@enqueue_activity("ENQUEUE_NEIGHBOR_ALLREDUCE", "neighbor_allreduce")
def neighbor_allreduce_nonblocking(tensor, *, self_weight=None, src_weights=None, dst_weights=None,
                                   enable_topo_check: bool = True, name=None) -> int:
    return _register(_core.neighbor_allreduce_nonblocking(
        tensor, self_weight=self_weight, src_weights=src_weights, dst_weights=dst_weights, name=name,
        enable_topo_check=enable_topo_check))


@_bf_errors
@enqueue_activity("ENQUEUE_NEIGHBOR_ALLREDUCE", "hierarchical_neighbor_allreduce")
def hierarchical_neighbor_allreduce(tensor, *, self_weight=None, src_machine_weights=None,
                                    dst_machine_weights=None, enable_topo_check: bool = False, name=None):
    return _core.hierarchical_neighbor_allreduce(
        tensor, self_weight=self_weight, src_machine_weights=src_machine_weights,
        dst_machine_weights=dst_machine_weights, name=name, enable_topo_check=enable_topo_check)


@_bf_errors
@enqueue_activity("ENQUEUE_NEIGHBOR_ALLREDUCE", "hierarchical_neighbor_allreduce")
def hierarchical_neighbor_allreduce_nonblocking(tensor, *, self_weight=None, src_machine_weights=None,
                                                dst_machine_weights=None, enable_topo_check: bool = False,
                                                name=None) -> int:
    return _register(_core.hierarchical_neighbor_allreduce_nonblocking(
        tensor, self_weight=self_weight, src_machine_weights=src_machine_weights,
        dst_machine_weights=dst_machine_weights, name=name, enable_topo_check=enable_topo_check))


from asyncddp.compat._bf_windows import *  # noqa: E402,F401,F403  (windows)
from asyncddp.compat._bf_windows import __all__ as _windows_all  # noqa: E402

__all__ += list(_windows_all)

timeline_start_activity = _bf_errors(_bf_timeline.timeline_start_activity)
timeline_end_activity = _bf_errors(_bf_timeline.timeline_end_activity)
__all__ += [*_bf_timeline.__all__, "timeline_context"]


@contextlib.contextmanager
def timeline_context(tensor_name: str, activity_name: str):
    """``with timeline_context("x", "COMPUTE"): ...`` records that block."""
    timeline_start_activity(tensor_name, activity_name)
    try:
        yield
    finally:
        timeline_end_activity(tensor_name)

from asyncddp.compat._bf_optimizers import *  # noqa: E402,F401,F403  (optimizers)
from asyncddp.compat._bf_optimizers import __all__ as _optimizers_all  # noqa: E402

__all__ += list(_optimizers_all)

# BlueFog's bluefog.torch re-exports the topology helpers (bf.RingGraph(n), bf.GetRecvWeights).
from asyncddp.compat.topology_util import *  # noqa: E402,F401,F403
from asyncddp.compat.topology_util import __all__ as _topology_all  # noqa: E402

__all__ += [name for name in _topology_all if name != "isPowerOf"]
