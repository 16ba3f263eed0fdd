"""The pure parts of surviving a lost rank: topologies for the survivors, the error, the switch."""

from __future__ import annotations

import networkx as nx
import pytest

import asyncddp as addp
from asyncddp.comm import collectives, recovery
from asyncddp.comm.world_rebuild import resized_topology
from asyncddp.errors import ConfigError
from asyncddp.topology import graphs


def test_exp2_stays_exp2_for_the_new_size():
    graph, weighted = resized_topology(graphs.exponential_two_graph(8), False, [0, 1, 2, 4, 5, 6, 7])
    assert sorted(graph.edges) == sorted(graphs.exponential_two_graph(7).edges) and not weighted


@pytest.mark.parametrize("build", [lambda n: graphs.ring_graph(n), lambda n: graphs.ring_graph(n, "left"),
                                   graphs.star_graph, graphs.fully_connected_graph,
                                   lambda n: graphs.mesh_grid_2d_graph(n)])
def test_known_families_are_rebuilt_in_their_family(build):
    graph, _ = resized_topology(build(6), False, [0, 1, 3, 5])
    assert sorted(graph.edges) == sorted(build(4).edges)


def test_weighted_family_keeps_its_weights():
    graph, weighted = resized_topology(graphs.mesh_grid_2d_graph(9), True, list(range(8)))
    expected = graphs.mesh_grid_2d_graph(8)
    assert weighted
    assert {e: graph.edges[e]["weight"] for e in graph.edges} == {e: expected.edges[e]["weight"] for e in expected.edges}


def test_other_graph_keeps_surviving_edges_renumbered_when_still_connected():
    custom = nx.DiGraph([(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (2, 0), (1, 3), (3, 1)])
    graph, weighted = resized_topology(custom, False, [0, 2, 3])  # rank 1 lost
    assert sorted(graph.edges) == [(0, 1), (1, 0), (1, 2), (2, 0)] and not weighted


def test_other_graph_falls_back_to_exp2_when_the_survivors_are_cut_apart():
    # Without rank 1, rank 0 has no out-neighbour left.
    graph, _ = resized_topology(nx.DiGraph([(0, 1), (1, 2), (2, 0), (2, 3), (3, 2)]), False, [0, 2, 3])
    assert sorted(graph.edges) == sorted(graphs.exponential_two_graph(3).edges)


def test_rank_lost_error_names_the_lost_ranks():
    error = addp.RankLostError([3, 1], 2, 5)
    assert isinstance(error, addp.CommError) and error.lost_ranks == (1, 3)
    assert error.world_version == 2 and error.new_size == 5
    assert str(error) == "lost rank(s) [1, 3] of the original job; the 5 survivors continue (world version 2)"


def test_fault_tolerance_switch(monkeypatch):
    monkeypatch.delenv(recovery.FAULT_TOLERANT_ENV, raising=False)
    assert not recovery.enabled()
    monkeypatch.setenv(recovery.FAULT_TOLERANT_ENV, "1")
    assert recovery.enabled()
    monkeypatch.setenv(recovery.FAULT_TOLERANT_ENV, "maybe")
    with pytest.raises(ConfigError, match="ASYNCDDP_FAULT_TOLERANT='maybe' is not a switch"):
        recovery.enabled()


def test_recovery_names_are_exported():
    assert addp.world_version() == 0
    assert addp.agree_on_step is collectives.agree_on_step and addp.WorldChange is recovery.WorldChange
    with pytest.raises(addp.CommError, match="on_world_change expects a callable"):
        addp.on_world_change(42)
