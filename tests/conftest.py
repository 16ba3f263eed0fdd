"""Shared fixtures for the outer test suite (tests that run in one process and start others)."""

# tests/mpi holds per-rank test files that only make sense under mpirun; the outer suite
# launches them itself through tests/mpi_helpers.py.
collect_ignore = ["mpi"]
