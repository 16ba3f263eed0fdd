"""Static virtual topologies as weighted ``networkx.DiGraph`` objects.

Convention used everywhere in asyncddp: nodes are ranks ``0..n-1``; an edge ``j -> i`` means
"j sends to i" and carries, in attribute ``weight``, the weight node i gives to j's value; the
self-loop ``i -> i`` carries i's self weight. Every node's incoming weights (self included) sum
to 1, so one step of neighbour averaging is ``x_i <- sum_j w(j -> i) * x_j``.
"""

from __future__ import annotations

import networkx as nx

from asyncddp.errors import TopologyError

__all__ = ["exponential_graph", "exponential_two_graph"]


def _check_size(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TopologyError(f"a topology needs a positive integer number of nodes, got {n!r}")


def _circulant(n: int, offsets: list[int]) -> nx.DiGraph:
    """Node i sends to i + o (mod n) for each offset; uniform weight over self and in-neighbours."""
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    offsets = sorted({o % n for o in offsets} - {0})
    weight = 1.0 / (len(offsets) + 1)
    for i in range(n):
        graph.add_edge(i, i, weight=weight)
        for o in offsets:
            graph.add_edge(i, (i + o) % n, weight=weight)
    return graph


def exponential_graph(n: int, base: int = 2) -> nx.DiGraph:
    """Node i sends to ``i + base**k mod n`` for every power ``base**k < n``.

    Weights are uniform, ``1/(tau + 1)`` with ``tau`` the out-degree (equal to the in-degree).
    """
    _check_size(n)
    if not isinstance(base, int) or base < 2:
        raise TopologyError(f"exponential_graph needs an integer base >= 2, got {base!r}")
    offsets = []
    power = 1
    while power < n:
        offsets.append(power)
        power *= base
    return _circulant(n, offsets)


def exponential_two_graph(n: int) -> nx.DiGraph:
    """The static Exponential-2 graph: ``exponential_graph(n, base=2)``."""
    return exponential_graph(n, base=2)
