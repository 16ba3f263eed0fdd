"""Virtual topologies: static graphs, dynamic schedules and their analysis. Imports no MPI.

Drawing (matplotlib) lives in ``asyncddp.topology.drawing`` and is not imported here.
"""

from asyncddp.topology.analysis import (
    DegreeStats,
    consensus_rate,
    degree_stats,
    in_neighbors,
    is_doubly_stochastic,
    is_regular,
    mixing_matrix,
    out_neighbors,
    spectral_gap,
)
from asyncddp.topology.ceca import ceca_digits, ceca_exact_average, ceca_schedule
from asyncddp.topology.equitopo import equi_basis, equi_dyn_schedule, equi_static_graph
from asyncddp.topology.graphs import (
    exponential_graph,
    exponential_two_graph,
    fully_connected_graph,
    graph_from_matrix,
    hypercube_graph,
    mesh_grid_2d_graph,
    ring_graph,
    star_graph,
    symmetric_exponential_graph,
)
from asyncddp.topology.registry import (
    TOPOLOGIES,
    TopologyEntry,
    build_graph,
    get_topology,
    schedule_factory,
    topology_names,
)
from asyncddp.topology.reports import Comparison, TopologyReport, compare_topologies, describe_topology
from asyncddp.topology.schedules import (
    NeighborStep,
    exp2_period,
    inner_outer_exponential_two,
    one_peer_exponential_two,
    static_schedule,
)
from asyncddp.topology.simulate import run_consensus, simulate_consensus, step_matrix

__all__ = [
    "exponential_graph", "exponential_two_graph", "symmetric_exponential_graph", "ring_graph",
    "mesh_grid_2d_graph", "star_graph", "fully_connected_graph", "hypercube_graph",
    "graph_from_matrix", "equi_static_graph", "equi_basis",
    "DegreeStats", "mixing_matrix", "consensus_rate", "spectral_gap", "is_doubly_stochastic",
    "is_regular", "in_neighbors", "out_neighbors", "degree_stats",
    "NeighborStep", "static_schedule", "one_peer_exponential_two", "inner_outer_exponential_two",
    "exp2_period", "ceca_schedule", "ceca_digits", "ceca_exact_average", "equi_dyn_schedule",
    "simulate_consensus", "run_consensus", "step_matrix",
    "TopologyEntry", "TOPOLOGIES", "topology_names", "get_topology", "build_graph", "schedule_factory",
    "TopologyReport", "Comparison", "describe_topology", "compare_topologies",
]
