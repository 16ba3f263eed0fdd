"""Distributed optimizers under real mpirun (per-rank checks in tests/mpi/test_optim*.py)."""

import pytest

from asyncddp.optim.dear import plan_groups
from tests.mpi_helpers import run_mpi_pytest

OPTIM = "tests/mpi/test_optim.py"
COMPRESSED = "tests/mpi/test_optim_compressed.py"  # CHOCO and Local SGD, in the same sessions


@pytest.mark.parametrize("num_ranks", [1, 3])
def test_optimizers_under_mpirun(num_ranks):
    run_mpi_pytest(num_ranks, OPTIM, extra_args=(COMPRESSED,))


def test_optimizers_at_four_ranks_on_two_fake_machines():
    # Fake machines change only the machine layout, so every test runs, hierarchical included.
    run_mpi_pytest(4, OPTIM, env={"ASYNCDDP_RANKS_PER_MACHINE": "2"}, extra_args=(COMPRESSED,))


def test_gradient_averaging_without_fusion():
    run_mpi_pytest(2, OPTIM, env={"ASYNCDDP_FUSION_THRESHOLD": "0"},
                   extra_args=("-k", "gradient_averaging or one_step"))  # fmt: skip



@pytest.mark.parametrize("num_ranks", [3])
def test_winput_with_a_slow_rank(num_ranks):
    done = run_mpi_pytest(num_ranks, "tests/mpi/test_optim_winput.py", extra_args=("-s",))
    assert done.stdout.count("steps per rank") == num_ranks


def test_dear_grouping():
    mib = 1024 * 1024
    sizes = [mib, mib, 3 * mib, mib // 2, mib // 2, 10 * mib]
    assert plan_groups(sizes, 2.5, None) == [[0, 1], [2], [3, 4], [5]]
    assert plan_groups(sizes, 100, None) == [[0, 1, 2, 3, 4, 5]]
    assert plan_groups(sizes, 0.1, None) == [[0], [1], [2], [3], [4], [5]]
    assert plan_groups(sizes, 25, 4) == [[0, 1, 2, 3], [4, 5]]
