"""BlueFog 0.3's ``bluefog.common.topology_util``: its CamelCase names over ``asyncddp.topology``.

The graphs are the very ``networkx.DiGraph`` objects asyncddp builds: an edge ``i -> j`` means
i sends to j and carries the weight j gives i's value, which is what BlueFog's matrix
``nx.to_numpy_array(G)[i, j]`` holds ("weight on edge i→j"). Our ``mixing_matrix(G)`` is the
transpose of that array (row = receiver); the functions here that return matrices use BlueFog's
orientation. Generators yield ``(send_ranks, recv_ranks)`` lists exactly as BlueFog's do.
``InferSourceFromDestinationRanks``/``InferDestinationFromSourceRanks`` are collective (an
allgather through the compat layer's ``allgather``).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator

import networkx as nx
import numpy as np

from asyncddp.topology import graphs as _graphs
from asyncddp.topology.schedules import inner_outer_exponential_two

__all__ = [
    "ExponentialTwoGraph", "ExponentialGraph", "SymmetricExponentialGraph", "MeshGrid2DGraph",
    "StarGraph", "RingGraph", "FullyConnectedGraph", "IsTopologyEquivalent", "IsRegularGraph",
    "GetRecvWeights", "GetSendWeights", "GetDynamicOnePeerSendRecvRanks",
    "GetExp2DynamicSendRecvMachineRanks", "GetInnerOuterRingDynamicSendRecvRanks",
    "GetInnerOuterExpo2DynamicSendRecvRanks", "InferSourceFromDestinationRanks",
    "InferDestinationFromSourceRanks", "isPowerOf",
]  # fmt: skip


def ExponentialTwoGraph(size: int) -> nx.DiGraph:
    """Node i sends to i + 2**k (mod size); uniform weights (BlueFog's default topology)."""
    return _graphs.exponential_two_graph(size)


def ExponentialGraph(size: int, base: int = 2) -> nx.DiGraph:
    """Node i sends to i + base**k (mod size) for every power below size; uniform weights."""
    return _graphs.exponential_graph(size, base)


def SymmetricExponentialGraph(size: int, base: int = 4) -> nx.DiGraph:
    """Offset d is used when min(d, size - d) is a power of ``base``; uniform weights."""
    return _graphs.symmetric_exponential_graph(size, base)


def MeshGrid2DGraph(size: int, shape: tuple[int, int] | None = None) -> nx.DiGraph:
    """2-D grid without wrap-around, Metropolis–Hastings weights."""
    return _graphs.mesh_grid_2d_graph(size, shape)


def StarGraph(size: int, center_rank: int = 0) -> nx.DiGraph:
    return _graphs.star_graph(size, center_rank)


def RingGraph(size: int, connect_style: int = 0) -> nx.DiGraph:
    """0: both neighbours (1/3 each); 1: left only (1/2); 2: right only (1/2)."""
    return _graphs.ring_graph(size, connect_style)


def FullyConnectedGraph(size: int) -> nx.DiGraph:
    return _graphs.fully_connected_graph(size)


def isPowerOf(x, base: int) -> bool:
    """True when ``x == base**k`` for some integer k >= 0 (exact, in integers)."""
    if isinstance(base, bool) or not isinstance(base, int) or base < 2:
        raise ValueError(f"isPowerOf: base must be an integer > 1, got {base!r}")
    if not x > 0:
        raise ValueError(f"isPowerOf: x must be positive, got {x!r}")
    power = 1
    while power < x:
        power *= base
    return power == x


def IsTopologyEquivalent(topo1: nx.DiGraph | None, topo2: nx.DiGraph | None) -> bool:
    """Same node count, same edges and same weights (not an isomorphism test, as in BlueFog)."""
    if topo1 is None or topo2 is None:
        return False
    if topo1.number_of_nodes() != topo2.number_of_nodes() or topo1.number_of_edges() != topo2.number_of_edges():
        return False
    return bool((nx.to_numpy_array(topo1) == nx.to_numpy_array(topo2)).all())


def IsRegularGraph(topo: nx.DiGraph) -> bool:
    """Every node has the same (in + out) degree."""
    degrees = {topo.degree(node) for node in topo.nodes}
    return len(degrees) <= 1


def _self_and_neighbor_weights(topo: nx.DiGraph, rank: int, edges) -> tuple[float, dict[int, float]]:
    self_weight, weights = 0.0, {}
    for other, data in edges:
        weight = float(data.get("weight", 1.0))
        if other == rank:
            self_weight = weight
        else:
            weights[other] = weight
    return self_weight, weights


def GetRecvWeights(topo: nx.DiGraph, rank: int) -> tuple[float, dict[int, float]]:
    """``(W[rank, rank], {src: W[src, rank]})`` with W BlueFog's matrix (W[i, j] on edge i→j)."""
    return _self_and_neighbor_weights(topo, rank, ((src, topo[src][rank]) for src in topo.predecessors(rank)))


def GetSendWeights(topo: nx.DiGraph, rank: int) -> tuple[float, dict[int, float]]:
    """``(W[rank, rank], {dst: W[rank, dst]})``."""
    return _self_and_neighbor_weights(topo, rank, ((dst, topo[rank][dst]) for dst in topo.successors(rank)))


def _clockwise_out(topo: nx.DiGraph, rank: int, size: int) -> list[int]:
    return sorted((r for r in topo.successors(rank) if r != rank), key=lambda r: (r - rank) % size)


def GetDynamicOnePeerSendRecvRanks(topo: nx.DiGraph, self_rank: int) -> Iterator[tuple[list[int], list[int]]]:
    """Step t: send to the ``t % outdeg``-th out-neighbour in clockwise order; receive from every
    rank whose own choice at step t is this rank."""
    size = topo.number_of_nodes()
    targets = [_clockwise_out(topo, rank, size) for rank in range(size)]
    if not targets[self_rank]:
        raise ValueError(f"rank {self_rank} has no out-neighbour in this topology; a one-peer schedule needs one")
    for index in itertools.count():
        recv = [other for other in range(size)
                if other != self_rank and targets[other] and targets[other][index % len(targets[other])] == self_rank]
        yield [targets[self_rank][index % len(targets[self_rank])]], recv


def _check_machines(world_size: int, local_size: int, self_rank: int) -> int:
    if local_size < 1 or world_size % local_size:
        raise ValueError(f"world_size {world_size} is not a multiple of local_size {local_size}: "
                         "these schedules need machines of equal size")
    if not 0 <= self_rank < world_size:
        raise ValueError(f"self_rank {self_rank} is not in 0..{world_size - 1}")
    return world_size // local_size


def GetExp2DynamicSendRecvMachineRanks(world_size: int, local_size: int, self_rank: int,
                                       local_rank: int) -> Iterator[tuple[list[int], list[int]]]:
    """Machine ranks: step t sends to machine m + 2**(t mod p), receives from m - 2**(t mod p),
    p = floor(log2(M - 1)) + 1 for M machines."""
    num_machines = _check_machines(world_size, local_size, self_rank)
    if self_rank % local_size != local_rank:
        raise ValueError(f"local_rank {local_rank} does not match self_rank {self_rank} with local_size {local_size}")
    if num_machines < 2:
        raise ValueError("GetExp2DynamicSendRecvMachineRanks needs at least two machines")
    period = (num_machines - 1).bit_length()
    machine = self_rank // local_size
    for index in itertools.count():
        dist = 2 ** (index % period)
        yield [(machine + dist) % num_machines], [(machine - dist) % num_machines]


def GetInnerOuterRingDynamicSendRecvRanks(world_size: int, local_size: int,
                                          self_rank: int) -> Iterator[tuple[list[int], list[int]]]:
    """Step t: local rank ``t % local_size`` talks to the same local rank on the next/previous
    machine; the others form a ring inside the machine that skips it."""
    num_machines = _check_machines(world_size, local_size, self_rank)
    if local_size <= 2:
        raise ValueError("GetInnerOuterRingDynamicSendRecvRanks needs more than 2 ranks per machine")
    machine, local = divmod(self_rank, local_size)
    base = machine * local_size
    for index in itertools.count():
        outside = index % local_size
        if local == outside:
            yield ([((machine + 1) % num_machines) * local_size + local],
                   [((machine - 1) % num_machines) * local_size + local])
            continue
        send, recv = (local + 1) % local_size, (local - 1) % local_size
        send = (send + 1) % local_size if send == outside else send
        recv = (recv - 1) % local_size if recv == outside else recv
        yield [base + send], [base + recv]


def GetInnerOuterExpo2DynamicSendRecvRanks(world_size: int, local_size: int,
                                           self_rank: int) -> Iterator[tuple[list[int], list[int]]]:
    """Like the ring version with distances 2**k across machines and inside (skipping the
    outside rank); ``asyncddp.topology.inner_outer_exponential_two`` gives the same ranks."""
    num_machines = _check_machines(world_size, local_size, self_rank)
    if local_size <= 2:
        raise ValueError("GetInnerOuterExpo2DynamicSendRecvRanks needs more than 2 ranks per machine")
    if num_machines < 2:
        raise ValueError("GetInnerOuterExpo2DynamicSendRecvRanks needs at least two machines")
    for step in inner_outer_exponential_two(world_size, local_size, self_rank):
        yield list(step.send_ranks), list(step.recv_ranks)


def _check_rank_list(ranks, self_rank: int, size: int, what: str) -> list[int]:
    ranks = list(ranks)
    if any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < size for r in ranks):
        raise ValueError(f"{what} must hold integers in 0..{size - 1}, got {ranks}")
    if len(set(ranks)) != len(ranks) or self_rank in ranks:
        raise ValueError(f"{what} must not repeat a rank or contain this rank ({self_rank}), got {ranks}")
    return [int(r) for r in ranks]


def _infer(ranks, transpose: bool, construct_adjacency_matrix: bool, what: str):
    import torch

    import asyncddp.comm as core
    from asyncddp.compat._bf_common import _bf_errors
    from asyncddp.compat._bf_timeline import enqueue_activity

    # BlueFog's bf.rank/bf.size/bf.allgather, built here so that this module never imports bluefog.
    allgather = _bf_errors(enqueue_activity("ENQUEUE_ALLGATHER", "allgather")(core.allgather))
    me, size = _bf_errors(core.rank)(), _bf_errors(core.size)()
    ranks = _check_rank_list(ranks, me, size, what)
    degrees = allgather(torch.tensor([len(ranks)], dtype=torch.int64)).tolist()
    flat = allgather(torch.tensor(ranks, dtype=torch.int64)).tolist()
    adjacency, offset = {}, 0
    for node, degree in enumerate(degrees):
        adjacency[node] = sorted(flat[offset:offset + degree])
        offset += degree
    inverse = collections.defaultdict(list)
    for node, adj in adjacency.items():
        for other in adj:
            inverse[other].append(node)
    result = inverse.get(me, [])
    if not construct_adjacency_matrix:
        return result
    matrix = np.eye(size)
    for node, adj in adjacency.items():
        matrix[node, adj] = 1.0
    if transpose:
        matrix = matrix.T
    # W[i, j] is the weight on edge i→j; columns (what each node receives) sum to 1.
    return result, matrix / matrix.sum(axis=0, keepdims=True)


def InferSourceFromDestinationRanks(dst_ranks, construct_adjacency_matrix: bool = False):
    """Collective: every rank gives whom it sends to and learns who sends to it (ascending)."""
    return _infer(dst_ranks, False, construct_adjacency_matrix, "dst_ranks")


def InferDestinationFromSourceRanks(src_ranks, construct_adjacency_matrix: bool = False):
    """Collective: every rank gives whom it receives from and learns whom it sends to (ascending)."""
    return _infer(src_ranks, True, construct_adjacency_matrix, "src_ranks")
