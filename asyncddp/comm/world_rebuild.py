"""What a lost rank changes in the runtime's state, rebuilt for the survivors.

``asyncddp.comm.recovery`` owns the protocol; this module holds its rebuild step's pieces: the
context (communicators, machine numbering, topologies of the same family for the new size) and
the one-sided windows. Open MPI documents neither topology communicators nor RMA windows as
fault tolerant, so nothing made on the old world is reused: windows are re-created on the new
one from each rank's current values.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from asyncddp.errors import TopologyError

__all__ = ["Before", "resized_topology", "update_context", "rebuild_windows"]


def _families() -> list:
    """(builder, keyword arguments) of the deterministic static families, in the order they are
    tried; the default (Exponential-2) first, since several families coincide at small sizes."""
    from asyncddp.topology import graphs as g

    return [
        (g.exponential_two_graph, {}),
        (g.exponential_graph, {"base": 3}),
        (g.symmetric_exponential_graph, {}),
        (g.ring_graph, {}),
        (g.ring_graph, {"connect_style": "left"}),
        (g.ring_graph, {"connect_style": "right"}),
        (g.mesh_grid_2d_graph, {}),
        (g.star_graph, {}),
        (g.fully_connected_graph, {}),
        (g.hypercube_graph, {}),
    ]


def _same(a: nx.DiGraph, b: nx.DiGraph, weighted: bool) -> bool:
    if set(a.edges) != set(b.edges):
        return False
    if not weighted:
        return True
    return all(abs(a.edges[e].get("weight", 1.0) - b.edges[e].get("weight", 1.0)) < 1e-12 for e in a.edges)


def resized_topology(graph: nx.DiGraph, is_weighted: bool, survivors: list[int]) -> tuple[nx.DiGraph, bool]:
    """The topology for the survivors (``survivors``: their old ranks, ascending).

    A graph of a known family is rebuilt in that family for the new size (Exp-2 stays Exp-2);
    any other graph keeps its edges among the survivors, renumbered, when that is still
    strongly connected; otherwise the default Exp-2 is used.
    """
    old_n, new_n = graph.number_of_nodes(), len(survivors)
    for builder, kwargs in _families():
        try:
            if _same(graph, builder(old_n, **kwargs), is_weighted):
                return builder(new_n, **kwargs), is_weighted
        except (TopologyError, ValueError):  # the family has no graph of that size
            continue
    from asyncddp.topology.graphs import exponential_two_graph

    kept = nx.relabel_nodes(graph.subgraph(survivors).copy(), {old: new for new, old in enumerate(survivors)})
    if new_n > 0 and nx.is_strongly_connected(kept) and not is_weighted:
        return kept, False
    return exponential_two_graph(new_n), False


@dataclass(frozen=True)
class Before:
    """The topologies as they were before the loss: a recovery that restarts after a further
    loss must resize these, not the half-rebuilt ones of its first attempt."""

    topology: nx.DiGraph
    is_weighted: bool
    machine_topology: nx.DiGraph
    machine_is_weighted: bool
    machine_size: int

    @classmethod
    def of(cls, ctx) -> "Before":
        return cls(ctx.topology, ctx.is_weighted, ctx.machine_topology, ctx.machine_is_weighted,
                   ctx.machine_size)


def update_context(ctx, before: Before, survivors: list[int], world, local, cross, machine_rank: int,
                   machine_size: int) -> None:
    """Point ``ctx`` at the rebuilt world (the context object stays the same one, so every
    holder of it sees the new world). ``survivors``: the survivors' ranks before the loss."""
    topology, weighted = resized_topology(before.topology, before.is_weighted, survivors)
    if machine_size == before.machine_size:
        machine_topology, machine_weighted = before.machine_topology, before.machine_is_weighted
    else:
        # A whole machine was lost: machine numbers shift, so the machine graph is rebuilt
        # in its family like the rank graph (machine identities are not tracked).
        machine_topology, machine_weighted = resized_topology(
            before.machine_topology, before.machine_is_weighted, list(range(machine_size)))
    ctx.comm, ctx.local_comm, ctx.cross_comm = world, local, cross
    ctx.machine_rank, ctx.machine_size = machine_rank, machine_size
    ctx.topology, ctx.is_weighted = topology, weighted
    ctx.machine_topology, ctx.machine_is_weighted = machine_topology, machine_weighted


def rebuild_windows(ctx) -> None:
    """Re-create every live window on the new world from this rank's current values.

    Each rank's registered tensor and associated p carry over; the neighbour buffers start
    again as copies of the rank's own value (what ``win_create`` does), since what the lost
    world's neighbours had deposited belonged to a topology that no longer exists. The old
    windows are not freed: ``MPI_Win_free`` synchronizes every member of the window, dead ones
    included, and Open MPI's ULFM documentation lists RMA as not fault tolerant (every one-sided
    component untested after a failure, behaviour unspecified), so freeing one could hang or
    crash a survivor. Their memory stays allocated until the process ends.
    """
    from asyncddp.comm.window_memory import Window

    for name in sorted(ctx.windows):
        old = ctx.windows[name]
        current = old.tensor.detach().clone() if old.adopted else old.tensor
        fresh = Window(current, name, False, ctx)
        fresh.p = old.p
        if old.adopted:
            fresh.memory_tensor()
        ctx.windows[name] = fresh
