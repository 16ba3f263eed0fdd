"""Static virtual topologies as weighted ``networkx.DiGraph`` objects.

Convention used everywhere in asyncddp: nodes are ranks ``0..n-1``; an edge ``j -> i`` means
"j sends to i" and carries, in attribute ``weight``, the weight node i gives to j's value; the
self-loop ``i -> i`` carries i's self weight. Every node's incoming weights (self included) sum
to 1, so one step of neighbour averaging is ``x_i <- sum_j w(j -> i) * x_j``.

The weights follow BlueFog 0.3 (whose matrix ``topo[j][i]`` is our edge ``j -> i``), so the
compatibility layer can hand these graphs out unchanged. The randomized EquiTopo graphs live in
``asyncddp.topology.equitopo``.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from asyncddp.errors import TopologyError

__all__ = [
    "exponential_graph",
    "exponential_two_graph",
    "symmetric_exponential_graph",
    "ring_graph",
    "mesh_grid_2d_graph",
    "star_graph",
    "fully_connected_graph",
    "hypercube_graph",
    "graph_from_matrix",
    "RING_STYLES",
]

# Accepted ring styles; BlueFog's integer codes 0/1/2 map to the same three.
RING_STYLES = {"bidirectional": 0, "left": 1, "right": 2}


def _check_size(n: int, what: str = "a topology") -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise TopologyError(f"{what} needs a positive integer number of nodes, got {n!r}")


def _check_rank(n: int, rank: int, what: str) -> None:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 0 <= rank < n:
        raise TopologyError(f"{what}: rank {rank!r} is not in 0..{n - 1}")


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


def graph_from_matrix(matrix) -> nx.DiGraph:
    """The graph of a mixing matrix ``W`` (``W[i, j]`` = weight node i gives to j's value).

    Zero entries are not edges. Raises ``TopologyError`` unless ``W`` is square.
    """
    w = np.asarray(matrix, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
        raise TopologyError(f"a mixing matrix must be square and non-empty, got shape {w.shape}")
    graph = nx.DiGraph()
    graph.add_nodes_from(range(w.shape[0]))
    for i, j in zip(*np.nonzero(w)):
        graph.add_edge(int(j), int(i), weight=float(w[i, j]))
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


def _is_power_of(value: int, base: int) -> bool:
    while value > 1 and value % base == 0:
        value //= base
    return value == 1


def symmetric_exponential_graph(n: int, base: int = 4) -> nx.DiGraph:
    """Node i sends to ``i + d`` for every offset d with ``min(d, n - d)`` a power of ``base``.

    Undirected (offsets come in pairs ±d); uniform weights ``1/(degree + 1)``.
    """
    _check_size(n)
    if not isinstance(base, int) or base < 2:
        raise TopologyError(f"symmetric_exponential_graph needs an integer base >= 2, got {base!r}")
    return _circulant(n, [d for d in range(1, n) if _is_power_of(min(d, n - d), base)])


def ring_graph(n: int, connect_style: str | int = "bidirectional") -> nx.DiGraph:
    """A ring. ``connect_style``: ``bidirectional`` (or 0): i sends to i±1, weights 1/3;
    ``left`` (1): i sends to i-1, weights 1/2; ``right`` (2): i sends to i+1, weights 1/2.

    With n = 2 the two directions coincide (weights 1/2); n = 1 is a lone self-loop.
    """
    _check_size(n)
    style = connect_style
    if isinstance(style, str) and style.strip().isdigit():
        style = int(style)
    if isinstance(style, (int, np.integer)) and not isinstance(style, bool):
        codes = {code: name for name, code in RING_STYLES.items()}
        style = codes.get(int(style), style)
    if style not in RING_STYLES:
        raise TopologyError(
            f"ring_graph: connect_style must be one of {', '.join(RING_STYLES)} "
            f"(or BlueFog's 0, 1, 2), got {connect_style!r}"
        )
    offsets = {"bidirectional": [1, -1], "left": [-1], "right": [1]}[style]
    return _circulant(n, offsets)


def _grid_shape(n: int, shape) -> tuple[int, int]:
    if shape is None:
        nrow = math.isqrt(n)
        while n % nrow:
            nrow -= 1
        return nrow, n // nrow
    try:
        nrow, ncol = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise TopologyError(f"mesh_grid_2d_graph: shape must be (rows, cols), got {shape!r}") from None
    if nrow < 1 or ncol < 1 or nrow * ncol != n:
        raise TopologyError(
            f"mesh_grid_2d_graph: shape {nrow}x{ncol} does not hold exactly {n} nodes; "
            "pass rows and cols whose product is n, or shape=None"
        )
    return nrow, ncol


def mesh_grid_2d_graph(n: int, shape: tuple[int, int] | None = None) -> nx.DiGraph:
    """A 2-D grid without wrap-around, nodes numbered row-major, 4-neighbour links both ways.

    ``shape=None`` uses the largest row count ``<= sqrt(n)`` that divides n. Weights are
    Metropolis–Hastings: ``w_ij = 1/max(deg_i, deg_j)`` with degrees counting the node itself,
    and the self weight takes the rest, so the matrix is symmetric and doubly stochastic.
    """
    _check_size(n)
    _, ncol = _grid_shape(n, shape)
    links: dict[int, set[int]] = {i: set() for i in range(n)}
    for i in range(n):
        if (i + 1) % ncol:
            links[i].add(i + 1)
            links[i + 1].add(i)
        if i + ncol < n:
            links[i].add(i + ncol)
            links[i + ncol].add(i)
    degree = {i: len(links[i]) + 1 for i in range(n)}
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for i in range(n):
        total = 0.0
        for j in sorted(links[i]):
            weight = 1.0 / max(degree[i], degree[j])
            graph.add_edge(j, i, weight=weight)
            total += weight
        graph.add_edge(i, i, weight=1.0 - total)
    return graph


def star_graph(n: int, center_rank: int = 0) -> nx.DiGraph:
    """A star: the centre sends to every leaf and every leaf to the centre.

    The centre weighs every node (itself included) ``1/n``; a leaf keeps ``1 - 1/n`` of itself
    and takes ``1/n`` from the centre (doubly stochastic, as in BlueFog).
    """
    _check_size(n)
    _check_rank(n, center_rank, "star_graph center_rank")
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_edge(center_rank, center_rank, weight=1.0 / n)
    for leaf in range(n):
        if leaf != center_rank:
            graph.add_edge(leaf, center_rank, weight=1.0 / n)
            graph.add_edge(center_rank, leaf, weight=1.0 / n)
            graph.add_edge(leaf, leaf, weight=1.0 - 1.0 / n)
    return graph


def fully_connected_graph(n: int) -> nx.DiGraph:
    """Every node sends to every other; all weights ``1/n`` (one step gives the exact average)."""
    _check_size(n)
    return _circulant(n, list(range(1, n)))


def hypercube_graph(n: int) -> nx.DiGraph:
    """The ``log2(n)``-dimensional hypercube: i sends to ``i XOR 2**k``; weights ``1/(log2(n)+1)``.

    Raises ``TopologyError`` unless n is a power of two.
    """
    _check_size(n)
    if n & (n - 1):
        raise TopologyError(f"hypercube_graph needs a power-of-two number of nodes, got {n}")
    dims = n.bit_length() - 1
    weight = 1.0 / (dims + 1)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for i in range(n):
        graph.add_edge(i, i, weight=weight)
        for k in range(dims):
            graph.add_edge(i, i ^ (1 << k), weight=weight)
    return graph
