"""Changing the topology: each rank checks the graph and settles its own ops, then all agree.

``set_topology`` and ``set_machine_topology`` are collective, and must be: if one rank kept the
old graph while the others took the new one, the next neighbour op would pair sends and receives
that do not match, and hang. A rank deciding alone cannot promise that (a nonblocking op still
running here, windows, a graph that fails its checks on one rank only), so the decision is made
by all ranks together:

1. each rank checks the graph it was given (one error text, or none);
2. it waits until its own queued and running ops have finished (``Context.drains``): they were
   issued for the old neighbours, and its peers issued the same ops, so they complete;
3. all ranks exchange one row each (a digest of the graph, whether it failed its checks, whether
   windows refuse the change) in one ``Allgather`` on the world, from the calling thread (the
   communication thread talks on its own duplicates, and is idle after step 2).

Every rank reads the same table and takes the same branch: ``TopologyError`` on every rank when
any rank's graph failed its checks or the ranks passed different graphs, False everywhere while
one-sided windows exist (``set_topology`` only: their buffers are laid out for the old
neighbours), else the graph is installed everywhere.

Weights: a weighted graph whose edge weights are not finite numbers is refused (NaN or infinity
would silently spread through every average). Negative weights and a disconnected graph are
accepted, as in BlueFog (fastest-mixing weight matrices have negative entries; one step of a
dynamic schedule is often disconnected), with a ``RuntimeWarning`` on rank 0, since as a static
topology they usually mean a mistake: the values of separate groups never mix.
"""

from __future__ import annotations

import hashlib
import math
import warnings

import networkx as nx
import numpy as np

from asyncddp.errors import TopologyError

__all__ = ["graph_problem", "graph_warnings", "agree_on_graph"]


def _edge_weight(data: dict):
    return data.get("weight", 1.0)


def graph_problem(graph, num_nodes: int, what: str, is_weighted: bool) -> str | None:
    """Why ``graph`` cannot be the topology of ``num_nodes`` ranks, or None."""
    if not isinstance(graph, nx.DiGraph):
        return f"{what} must be a networkx.DiGraph, got {type(graph).__name__}"
    try:
        nodes = sorted(graph.nodes)
    except TypeError:
        nodes = None
    if nodes != list(range(num_nodes)):
        shown = nodes[:8] if nodes is not None else list(graph.nodes)[:8]
        return (f"{what} has nodes {shown}... ({graph.number_of_nodes()} in all) "
                f"but the job has {num_nodes}: build it for nodes 0..{num_nodes - 1}")
    if not is_weighted:
        return None
    for u, v, data in graph.edges(data=True):
        weight = _edge_weight(data)
        try:
            finite = math.isfinite(weight) and not isinstance(weight, bool)
        except TypeError:
            finite = False
        if not finite:
            return (f"{what}: edge {u}->{v} has weight {weight!r}; the weights of a weighted topology "
                    "must be finite numbers")
    return None


def graph_warnings(graph: nx.DiGraph, what: str, is_weighted: bool) -> list[str]:
    """What is legal but probably a mistake in a graph that passed ``graph_problem``."""
    found = []
    if is_weighted:
        negative = [(u, v) for u, v, data in graph.edges(data=True) if _edge_weight(data) < 0]
        if negative:
            u, v = negative[0]
            found.append(f"{what} has {len(negative)} negative weight(s) (edge {u}->{v} first); averaging "
                         "with them may diverge")
    if graph.number_of_nodes() > 1 and not nx.is_weakly_connected(graph):
        groups = sorted(sorted(group) for group in nx.weakly_connected_components(graph))
        shown = ", ".join(str(group) for group in groups[:4])
        found.append(f"{what} is disconnected ({len(groups)} separate groups of ranks: {shown}"
                     f"{', ...' if len(groups) > 4 else ''}); neighbour averaging never mixes their values")
    return found


def _digest(graph: nx.DiGraph, is_weighted: bool) -> int:
    """A 63-bit number standing for the graph (its edges, and their weights when weighted)."""
    edges = sorted((int(u), int(v), float(_edge_weight(d)) if is_weighted else 0.0)
                   for u, v, d in graph.edges(data=True))
    text = repr((graph.number_of_nodes(), bool(is_weighted), edges)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def agree_on_graph(ctx, graph, num_nodes: int, is_weighted: bool, what: str, refuse_with_windows: bool) -> bool:
    """Steps 1-3 above: True when every rank may install ``graph``, False on every rank while
    windows refuse it, else ``TopologyError`` on every rank. Collective over ``ctx.comm``."""
    problem = graph_problem(graph, num_nodes, what, is_weighted)
    for drain in ctx.drains:
        drain()
    comm = ctx.comm
    mine = np.array([0 if problem else _digest(graph, is_weighted), problem is not None,
                     refuse_with_windows and bool(ctx.windows)], dtype=np.int64)
    table = np.empty((comm.Get_size(), 3), dtype=np.int64)
    comm.Allgather(mine, table)
    if problem:
        raise TopologyError(problem)
    invalid = np.flatnonzero(table[:, 1]).tolist()
    if invalid:
        raise TopologyError(f"rank(s) {invalid} passed an invalid graph as {what} (their error says why); "
                            "every rank must pass the same valid graph")
    differ = np.flatnonzero(table[:, 0] != table[0, 0]).tolist()
    if differ:
        raise TopologyError(f"the ranks passed different graphs as {what} (rank(s) {differ} differ from "
                            "rank 0's): every rank must pass the same graph and is_weighted")
    if table[:, 2].any():
        return False
    if comm.Get_rank() == 0:
        for text in graph_warnings(graph, what, is_weighted):
            warnings.warn(text, RuntimeWarning, stacklevel=4)
    return True
