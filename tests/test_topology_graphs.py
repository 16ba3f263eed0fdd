"""Static topologies and their analysis, checked against literal values (pure Python, no MPI)."""

import numpy as np
import pytest

from asyncddp.errors import TopologyError
from asyncddp.topology import (
    consensus_rate,
    degree_stats,
    equi_static_graph,
    exponential_graph,
    exponential_two_graph,
    fully_connected_graph,
    hypercube_graph,
    in_neighbors,
    is_doubly_stochastic,
    is_regular,
    mesh_grid_2d_graph,
    mixing_matrix,
    out_neighbors,
    ring_graph,
    star_graph,
    symmetric_exponential_graph,
)
from asyncddp.topology.registry import TOPOLOGIES, build_graph, get_topology, topology_names


def test_exp2_neighbour_sets():
    g = exponential_two_graph(12)
    assert out_neighbors(g, 0) == [1, 2, 4, 8]
    assert in_neighbors(g, 0) == [4, 8, 10, 11]
    g8 = exponential_graph(8)
    assert out_neighbors(g8, 0) == [1, 2, 4] and in_neighbors(g8, 0) == [4, 6, 7]
    assert out_neighbors(exponential_graph(10, base=3), 0) == [1, 3, 9]
    assert all(w == 0.25 for *_, w in g8.edges(data="weight"))


@pytest.mark.parametrize("n, rho", [(4, 1 / 3), (8, 0.5), (16, 0.6), (64, 5 / 7), (128, 0.75)])
def test_exp2_rate_even_n(n, rho):
    assert consensus_rate(exponential_two_graph(n)) == pytest.approx(rho, abs=1e-12)
    assert rho == pytest.approx(1 - 2 / (1 + int(np.ceil(np.log2(n)))))


def test_exp2_rate_odd_n():
    assert consensus_rate(exponential_two_graph(17)) == pytest.approx(0.5476, abs=1e-4)


def test_mixing_matrix_convention():
    w = mixing_matrix(ring_graph(4, "right"))  # i sends to i+1, so i weighs i-1
    assert w[1, 0] == 0.5 and w[0, 1] == 0.0 and w[0, 0] == 0.5 and w[0, 3] == 0.5


def test_ring_styles_match_bluefog_codes():
    for style, code in (("bidirectional", 0), ("left", 1), ("right", 2)):
        assert np.array_equal(mixing_matrix(ring_graph(6, style)), mixing_matrix(ring_graph(6, code)))
    w = mixing_matrix(ring_graph(5))
    assert np.allclose(w[0], [1 / 3, 1 / 3, 0, 0, 1 / 3])
    assert out_neighbors(ring_graph(5, "left"), 2) == [1]
    assert np.allclose(mixing_matrix(ring_graph(2)), 0.5)
    with pytest.raises(TopologyError, match="connect_style"):
        ring_graph(5, 3)


def test_star_weights():
    w = mixing_matrix(star_graph(4, center_rank=1))
    assert np.allclose(w[1], 0.25)  # the centre weighs everyone 1/n
    assert np.allclose(w[0], [0.75, 0.25, 0, 0]) and np.allclose(w[3], [0, 0.25, 0, 0.75])
    assert is_doubly_stochastic(w)


def test_mesh_metropolis_hastings():
    g = mesh_grid_2d_graph(6)  # 2 x 3, row-major
    w = mixing_matrix(g)
    # corner 0 (degree 3 with self) and edge node 1 (degree 4): 1/4; 0 and 3 both degree 3: 1/3
    assert w[0, 1] == 0.25 and w[0, 3] == pytest.approx(1 / 3) and w[0, 0] == pytest.approx(1 - 0.25 - 1 / 3)
    assert np.allclose(w, w.T) and is_doubly_stochastic(g)
    assert out_neighbors(mesh_grid_2d_graph(16), 5) == [1, 4, 6, 9]
    assert out_neighbors(mesh_grid_2d_graph(6, shape=(3, 2)), 2) == [0, 3, 4]
    with pytest.raises(TopologyError, match="shape 4x4"):
        mesh_grid_2d_graph(12, shape=(4, 4))


def test_symmetric_exponential_and_full_and_hypercube():
    assert out_neighbors(symmetric_exponential_graph(16), 0) == [1, 4, 12, 15]
    assert np.allclose(mixing_matrix(fully_connected_graph(5)), 0.2)
    assert consensus_rate(fully_connected_graph(5)) == pytest.approx(0, abs=1e-12)
    assert out_neighbors(hypercube_graph(8), 5) == [1, 4, 7]
    with pytest.raises(TopologyError, match="power-of-two"):
        hypercube_graph(12)


def test_equi_static():
    g = equi_static_graph(32, degree=3, seed=1)
    w = mixing_matrix(g)
    assert np.allclose(np.diag(w), 1 / 32) and is_doubly_stochastic(g)
    assert degree_stats(g).max_out <= 3
    assert np.array_equal(w, mixing_matrix(equi_static_graph(32, degree=3, seed=1)))  # shared seed
    u = mixing_matrix(equi_static_graph(32, degree=3, seed=1, undirected=True))
    assert np.allclose(u, u.T) and is_doubly_stochastic(u)
    # degree ~ ln n keeps the rate bounded away from 1 as n grows 8x (measured 0.83 and 0.91)
    rates = [np.mean([consensus_rate(equi_static_graph(n, seed=s)) for s in range(5)]) for n in (32, 256)]
    assert max(rates) < 0.95 and abs(rates[0] - rates[1]) < 0.15


@pytest.mark.parametrize("name", topology_names("static"))
@pytest.mark.parametrize("n", [1, 2, 8, 16])
def test_every_static_graph_is_stochastic(name, n):
    g = build_graph(name, n)
    w = mixing_matrix(g)
    assert sorted(g.nodes) == list(range(n))
    assert np.allclose(w.sum(axis=1), 1.0)  # incoming weights sum to 1
    assert is_doubly_stochastic(g)
    if name not in ("star", "mesh"):
        assert is_regular(g)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_bad_sizes(bad):
    with pytest.raises(TopologyError, match="positive integer"):
        exponential_two_graph(bad)
    assert issubclass(TopologyError, ValueError)


def test_registry_errors_and_params():
    with pytest.raises(TopologyError, match="valid names: exp2, exp, "):
        get_topology("exp3")
    with pytest.raises(TopologyError, match="accepts: base"):
        build_graph("exp", 8, shape=(2, 4))
    assert out_neighbors(build_graph("exp", 10, base=3), 0) == [1, 3, 9]
    assert set(TOPOLOGIES) >= {"exp2", "ring", "mesh", "ceca", "equi-dyn", "one-peer-exp2"}
    with pytest.raises(TopologyError, match="not a node"):
        out_neighbors(exponential_two_graph(4), 4)
