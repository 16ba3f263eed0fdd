"""Shared fixtures for the outer test suite (tests that run in one process and start others)."""

import os

# tests/mpi holds per-rank test files that only make sense under mpirun; the outer suite
# launches them itself through tests/mpi_helpers.py.
collect_ignore = ["mpi"]

# Inside a Slurm allocation `asyncddp run` targets the allocation's hosts; the suite's jobs must
# stay on this machine whatever allocation the tests happen to run in.
for _name in [name for name in os.environ if name.startswith("SLURM_")]:
    del os.environ[_name]
