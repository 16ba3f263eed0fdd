"""Process bootstrap under mpirun: ranks, local/machine split, default topology."""

from mpi4py import MPI

import asyncddp as addp
from asyncddp.topology import exponential_two_graph


def test_world_matches_mpi():
    assert addp.rank() == MPI.COMM_WORLD.Get_rank()
    assert addp.size() == MPI.COMM_WORLD.Get_size()


def test_single_machine_split():
    # mpirun on one host: every rank shares the machine.
    assert addp.local_size() == addp.size()
    assert addp.local_rank() == addp.rank()
    assert addp.machine_size() == 1
    assert addp.machine_rank() == 0
    assert addp.is_homogeneous()


def test_default_topology_is_exponential_two():
    n = addp.size()
    expected = exponential_two_graph(n)
    assert sorted(addp.load_topology().edges) == sorted(expected.edges)
    r = addp.rank()
    offsets = [1 << k for k in range(n.bit_length()) if (1 << k) < n]
    assert addp.out_neighbor_ranks() == sorted({(r + o) % n for o in offsets} - {r})
    assert addp.in_neighbor_ranks() == sorted({(r - o) % n for o in offsets} - {r})
