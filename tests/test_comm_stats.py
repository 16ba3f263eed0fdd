"""The comm core's byte counters (``comm_stats``) under real mpirun: tests/mpi/test_comm_stats.py at two
ranks on two fake machines, so large allreduces take asyncddp's own ring (measured) as well as MPI's
``Allreduce`` (computed)."""

from tests.mpi_helpers import run_mpi_pytest


def test_counted_bytes_equal_the_known_volumes():
    run_mpi_pytest(2, "tests/mpi/test_comm_stats.py", env={"ASYNCDDP_RANKS_PER_MACHINE": "1"})
