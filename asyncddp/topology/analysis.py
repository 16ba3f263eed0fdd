"""Analysis of static topologies: mixing matrix, consensus rate, stochasticity, degrees.

``W = mixing_matrix(G)`` has ``W[i, j]`` = the weight node i gives to j's value (the weight of edge
``j -> i``), so one averaging step is ``x <- W @ x``. The consensus rate
``rho = ||W - 11^T/n||_2`` bounds how much one step shrinks the distance to the average when W is
doubly stochastic: smaller is faster, 0 is exact averaging in one step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import networkx as nx
import numpy as np

from asyncddp.errors import TopologyError

__all__ = [
    "DegreeStats",
    "mixing_matrix",
    "consensus_rate",
    "spectral_gap",
    "is_doubly_stochastic",
    "is_regular",
    "in_neighbors",
    "out_neighbors",
    "recv_weights",
    "degree_stats",
]


@dataclass(frozen=True)
class DegreeStats:
    """In/out degrees of a topology, self-loops excluded."""

    min_in: int
    max_in: int
    mean_in: float
    min_out: int
    max_out: int
    mean_out: float

    def to_dict(self) -> dict:
        return asdict(self)


def _nodes(graph: nx.DiGraph) -> int:
    n = graph.number_of_nodes()
    if n < 1 or sorted(graph.nodes) != list(range(n)):
        raise TopologyError(f"a topology must have nodes 0..n-1 with n >= 1, got {sorted(graph.nodes)[:8]}")
    return n


def mixing_matrix(graph: nx.DiGraph) -> np.ndarray:
    """``W[i, j]`` = weight node i gives to j's value (edge ``j -> i``); missing weights count 1."""
    n = _nodes(graph)
    w = np.zeros((n, n))
    for src, dst, weight in graph.edges(data="weight", default=1.0):
        w[dst, src] = weight
    return w


def _as_matrix(graph_or_matrix) -> np.ndarray:
    if isinstance(graph_or_matrix, nx.Graph):
        return mixing_matrix(graph_or_matrix)
    return np.asarray(graph_or_matrix, dtype=float)


def consensus_rate(graph_or_matrix) -> float:
    """``rho = ||W - 11^T/n||_2`` (largest singular value); accepts a graph or a mixing matrix."""
    w = _as_matrix(graph_or_matrix)
    n = w.shape[0]
    return float(np.linalg.norm(w - np.full((n, n), 1.0 / n), 2))


def spectral_gap(graph_or_matrix) -> float:
    """``1 - rho``: the fraction of the disagreement one step removes, at least."""
    return 1.0 - consensus_rate(graph_or_matrix)


def is_doubly_stochastic(graph_or_matrix, atol: float = 1e-9) -> bool:
    """Non-negative weights whose rows and columns all sum to 1 (the average is kept)."""
    w = _as_matrix(graph_or_matrix)
    return bool(
        (w >= -atol).all()
        and np.allclose(w.sum(axis=0), 1.0, atol=atol)
        and np.allclose(w.sum(axis=1), 1.0, atol=atol)
    )


def in_neighbors(graph: nx.DiGraph, rank: int) -> list[int]:
    """Ranks that send to ``rank``, ascending, self excluded."""
    _check_node(graph, rank)
    return sorted(j for j in graph.predecessors(rank) if j != rank)


def out_neighbors(graph: nx.DiGraph, rank: int) -> list[int]:
    """Ranks ``rank`` sends to, ascending, self excluded."""
    _check_node(graph, rank)
    return sorted(j for j in graph.successors(rank) if j != rank)


def recv_weights(graph: nx.DiGraph, rank: int) -> tuple[float, dict[int, float]]:
    """``(self weight, {in-neighbour: weight})`` of ``rank``: what one averaging step reads.

    A missing self-loop means self weight 0; an edge without ``weight`` counts as 1.
    """
    own = graph.get_edge_data(rank, rank, default={}).get("weight", 0.0)
    return float(own), {j: float(graph[j][rank].get("weight", 1.0)) for j in in_neighbors(graph, rank)}


def _check_node(graph: nx.DiGraph, rank: int) -> None:
    n = _nodes(graph)
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < n:
        raise TopologyError(f"rank {rank!r} is not a node of this {n}-node topology (0..{n - 1})")


def degree_stats(graph: nx.DiGraph) -> DegreeStats:
    """Minimum, maximum and mean in- and out-degree, self-loops excluded."""
    n = _nodes(graph)
    ins = [len(in_neighbors(graph, r)) for r in range(n)]
    outs = [len(out_neighbors(graph, r)) for r in range(n)]
    return DegreeStats(min(ins), max(ins), sum(ins) / n, min(outs), max(outs), sum(outs) / n)


def is_regular(graph: nx.DiGraph) -> bool:
    """Every node has the same in-degree and the same out-degree (self-loops excluded)."""
    stats = degree_stats(graph)
    return stats.min_in == stats.max_in and stats.min_out == stats.max_out
