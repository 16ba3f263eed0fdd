"""Virtual topologies: static graphs, dynamic schedules and their analysis. Imports no MPI."""

from asyncddp.topology.graphs import exponential_graph, exponential_two_graph
from asyncddp.topology.schedules import NeighborStep

__all__ = ["exponential_graph", "exponential_two_graph", "NeighborStep"]
