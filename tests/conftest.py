"""Shared fixtures for the outer test suite (tests that run in one process and start others)."""

import os

from asyncddp.comm.mpi_env import configure_components

# tests/mpi holds per-rank test files that only make sense under mpirun; the outer suite
# launches them itself through tests/mpi_helpers.py.
collect_ignore = ["mpi"]

# Inside a Slurm allocation `asyncddp run` targets the allocation's hosts; the suite's jobs must
# stay on this machine whatever allocation the tests happen to run in.
for _name in [name for name in os.environ if name.startswith("SLURM_")]:
    del os.environ[_name]

# What asyncddp.init() does on each rank, done once for every job the suite starts (the scripts that
# use mpi4py alone included): on a node without fabric devices PyPI's Open MPI prints noise for UCX
# windows and spends ~1 s of every MPI_Init probing libfabric. Tests of that choice unset both.
configure_components(os.environ)
