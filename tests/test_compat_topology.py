"""BlueFog's topology_util names: same matrices (BlueFog orientation), neighbour orders, generators."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest

from asyncddp.compat import topology_util as tu
from asyncddp.topology import mixing_matrix


def bf_matrix(graph):
    """BlueFog's W: W[i, j] = weight on edge i -> j."""
    return nx.to_numpy_array(graph, nodelist=range(graph.number_of_nodes()))


def circulant(first_row):
    return np.array([np.roll(first_row, i) for i in range(len(first_row))])


def test_exponential_graphs_match_bluefog_rows():
    expected = circulant([0.25, 0.25, 0.25, 0, 0.25, 0, 0, 0])
    for graph in (tu.ExponentialGraph(8), tu.ExponentialTwoGraph(8)):
        assert np.array_equal(bf_matrix(graph), expected)
        # Our mixing matrix is the same graph read with the receiver as row.
        assert np.array_equal(mixing_matrix(graph), expected.T)
    assert np.array_equal(bf_matrix(tu.ExponentialGraph(10, base=3))[0], [0.25, 0.25, 0, 0.25, 0, 0, 0, 0, 0, 0.25])


def test_symmetric_exponential_and_fully_connected():
    row = np.zeros(12)
    row[[0, 1, 4, 8, 11]] = 0.2
    assert np.allclose(bf_matrix(tu.SymmetricExponentialGraph(12)), circulant(row))
    assert np.allclose(bf_matrix(tu.FullyConnectedGraph(5)), np.full((5, 5), 0.2))


@pytest.mark.parametrize("style, row", [
    (0, [1 / 3, 1 / 3, 0, 0, 1 / 3]),
    (1, [0.5, 0, 0, 0, 0.5]),
    (2, [0.5, 0.5, 0, 0, 0]),
])
def test_ring_styles(style, row):
    assert np.allclose(bf_matrix(tu.RingGraph(5, style)), circulant(row))


def test_ring_two_and_one_nodes():
    assert np.allclose(bf_matrix(tu.RingGraph(2)), [[0.5, 0.5], [0.5, 0.5]])
    assert np.allclose(bf_matrix(tu.RingGraph(1)), [[1.0]])


def test_star_graph():
    w = bf_matrix(tu.StarGraph(4))
    assert np.allclose(w, [[0.25, 0.25, 0.25, 0.25], [0.25, 0.75, 0, 0], [0.25, 0, 0.75, 0], [0.25, 0, 0, 0.75]])
    assert np.allclose(bf_matrix(tu.StarGraph(3, center_rank=2))[2], [1 / 3] * 3)


def test_mesh_grid_metropolis_hastings():
    w = bf_matrix(tu.MeshGrid2DGraph(6))  # 2 x 3
    assert np.allclose(w[0], [5 / 12, 1 / 4, 0, 1 / 3, 0, 0])
    assert np.allclose(w[1], [1 / 4, 1 / 4, 1 / 4, 0, 1 / 4, 0])
    assert np.allclose(w, w.T) and np.allclose(w.sum(axis=1), 1)
    assert np.allclose(bf_matrix(tu.MeshGrid2DGraph(4))[0], [1 / 3, 1 / 3, 1 / 3, 0])
    assert bf_matrix(tu.MeshGrid2DGraph(6, shape=(3, 2)))[0][2] > 0


def test_weights_and_predicates():
    topo = tu.ExponentialGraph(8)
    assert tu.GetRecvWeights(topo, 0) == (0.25, {7: 0.25, 6: 0.25, 4: 0.25})
    assert tu.GetSendWeights(topo, 0) == (0.25, {1: 0.25, 2: 0.25, 4: 0.25})
    assert tu.GetRecvWeights(tu.StarGraph(4), 1) == (0.75, {0: 0.25})
    assert tu.GetSendWeights(tu.RingGraph(4, 2), 3) == (0.5, {0: 0.5})
    assert tu.IsRegularGraph(topo) and tu.IsRegularGraph(tu.RingGraph(6))
    assert not tu.IsRegularGraph(tu.StarGraph(4)) and not tu.IsRegularGraph(tu.MeshGrid2DGraph(6))
    assert tu.IsTopologyEquivalent(topo, tu.ExponentialTwoGraph(8))
    assert not tu.IsTopologyEquivalent(topo, tu.RingGraph(8))
    assert not tu.IsTopologyEquivalent(topo, tu.ExponentialGraph(9))
    assert not tu.IsTopologyEquivalent(topo, None)


def take(generator, count):
    return list(itertools.islice(generator, count))


def test_one_peer_sequence_of_exponential_graph_8():
    steps = take(tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(8), 0), 6)
    assert steps == [([1], [7]), ([2], [6]), ([4], [4])] * 2
    assert take(tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(8), 5), 3) == [([6], [4]), ([7], [3]), ([1], [1])]


def test_one_peer_on_irregular_graph_receives_from_all_choosers():
    star = tu.StarGraph(4)
    assert take(tu.GetDynamicOnePeerSendRecvRanks(star, 0), 4) == [([1], [1, 2, 3]), ([2], [1, 2, 3]), ([3], [1, 2, 3]), ([1], [1, 2, 3])]
    assert take(tu.GetDynamicOnePeerSendRecvRanks(star, 2), 3) == [([0], []), ([0], [0]), ([0], [])]


def test_exp2_machine_ranks():
    assert take(tu.GetExp2DynamicSendRecvMachineRanks(8, 2, 0, 0), 4) == [([1], [3]), ([2], [2])] * 2
    assert take(tu.GetExp2DynamicSendRecvMachineRanks(10, 2, 3, 1), 3) == [([2], [0]), ([3], [4]), ([0], [2])]
    with pytest.raises(ValueError):
        next(tu.GetExp2DynamicSendRecvMachineRanks(8, 2, 3, 0))


def test_inner_outer_ring():
    assert take(tu.GetInnerOuterRingDynamicSendRecvRanks(8, 4, 1), 4) == [([2], [3]), ([5], [5]), ([3], [0]), ([2], [0])]
    with pytest.raises(ValueError, match="more than 2"):
        next(tu.GetInnerOuterRingDynamicSendRecvRanks(8, 2, 0))


def _bluefog_expo2_reference(world, local, me, index):
    """BlueFog's inner/outer Exp-2 rule, restated: distances skip over the outside rank."""
    machines = world // local
    machine, lr = divmod(me, local)
    outside = index % local
    if lr == outside:
        dist = 2 ** (index % (int(np.log2(machines - 1)) + 1))
        return [((machine + dist) % machines) * local + lr], [((machine - dist) % machines) * local + lr]
    inner = 2 ** (index % (int(np.log2(local - 2)) + 1))
    fwd = inner + 1 if inner >= (outside - lr) % local else inner
    back = inner + 1 if inner >= (lr - outside) % local else inner
    return [machine * local + (lr + fwd) % local], [machine * local + (lr - back) % local]


@pytest.mark.parametrize("world, local", [(8, 4), (12, 3), (15, 5), (24, 6), (16, 8), (9, 3)])
def test_inner_outer_expo2_matches_bluefog_rule_and_is_consistent(world, local):
    for me in range(world):
        got = take(tu.GetInnerOuterExpo2DynamicSendRecvRanks(world, local, me), 12)
        assert got == [_bluefog_expo2_reference(world, local, me, t) for t in range(12)]
    for gen in (tu.GetInnerOuterExpo2DynamicSendRecvRanks, tu.GetInnerOuterRingDynamicSendRecvRanks):
        table = [take(gen(world, local, me), 12) for me in range(world)]
        for t in range(12):
            sends = {(me, table[me][t][0][0]) for me in range(world)}
            recvs = {(table[me][t][1][0], me) for me in range(world)}
            assert sends == recvs


def test_inner_outer_needs_equal_machines():
    with pytest.raises(ValueError, match="multiple"):
        next(tu.GetInnerOuterExpo2DynamicSendRecvRanks(10, 4, 0))
