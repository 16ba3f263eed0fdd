"""The process bootstrap, as one process and under real mpirun at several world sizes."""

import subprocess
import sys

import pytest

from tests.mpi_helpers import ROOT, run_mpi, run_mpi_pytest


def test_single_process_without_mpirun():
    code = (
        "import asyncddp as addp\n"
        "try:\n    addp.rank()\nexcept addp.NotInitializedError as e:\n    print('before:', e)\n"
        "addp.init()\n"
        "print(addp.rank(), addp.size(), addp.local_rank(), addp.local_size(),"
        " addp.machine_rank(), addp.machine_size(), addp.in_neighbor_ranks())\n"
        "addp.shutdown()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "before: asyncddp is not initialised: call asyncddp.init()" in done.stdout
    assert done.stdout.strip().endswith("0 1 0 1 0 1 []")


def test_cli_does_not_start_mpi_or_torch():
    code = "import sys, asyncddp, asyncddp.cli.main; print('mpi4py.MPI' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "False False", done.stderr


@pytest.mark.parametrize("num_ranks", [1, 2, 3, 4])
def test_bootstrap_under_mpirun(num_ranks):
    run_mpi_pytest(num_ranks, "tests/mpi/test_context.py")


@pytest.mark.parametrize("num_ranks", [3, 4])
def test_fake_machines_under_mpirun(num_ranks):
    run_mpi_pytest(
        num_ranks,
        "tests/mpi/test_context_fake_machines.py",
        env={"ASYNCDDP_RANKS_PER_MACHINE": "2"},
    )


def test_unhandled_exception_aborts_the_job():
    code = (
        "import time, asyncddp as addp\n"
        "addp.init()\n"
        "if addp.rank() == 1:\n    raise RuntimeError('boom on rank 1')\n"
        "time.sleep(60)\n"
    )
    done = run_mpi(3, [sys.executable, "-c", code], timeout=60)
    assert done.returncode != 0
    assert "boom on rank 1" in done.stderr
