"""One-sided windows: per-rank tests under real mpirun, the push-sum example, and the OSC fix."""

import subprocess
import sys

import pytest

from asyncddp.comm.mpi_env import configure_components
from tests.mpi_helpers import ROOT, find_mpirun, mpi_env, run_mpi, run_mpi_pytest

UCX_NOISE = "OSC UCX component priority set inside component query failed"


@pytest.mark.parametrize("num_ranks", [1, 2, 3, 4])
def test_windows_under_mpirun(num_ranks):
    run_mpi_pytest(num_ranks, "tests/mpi/test_windows.py")


def test_push_sum_example_reaches_the_exact_average():
    done = run_mpi(4, [sys.executable, "examples/push_sum.py"], timeout=120)
    assert done.returncode == 0, done.stderr
    lines = sorted(line for line in done.stdout.splitlines() if "push-sum estimate" in line)
    assert len(lines) == 4, done.stdout
    exact = (1 + 2 + 5 + 10) / 4
    for line in lines:
        estimate = float(line.split("estimate ")[1].split(",")[0])
        assert abs(estimate - exact) < 1e-6, line


def test_fabric_components_are_deselected_only_where_no_fabric_exists_and_the_user_chose_none(tmp_path):
    env = {}
    assert configure_components(env, dev=str(tmp_path)) == {"OMPI_MCA_osc": "^ucx", "OMPI_MCA_btl": "^ofi"}
    assert env == {"OMPI_MCA_osc": "^ucx", "OMPI_MCA_btl": "^ofi"}
    mine = {"OMPI_MCA_osc": "rdma"}
    assert configure_components(mine, dev=str(tmp_path)) == {"OMPI_MCA_btl": "^ofi"}
    assert mine == {"OMPI_MCA_osc": "rdma", "OMPI_MCA_btl": "^ofi"}
    for index, device in enumerate(("infiniband", "cxi0", "hfi1_0")):
        (tmp_path / f"node{index}" / device).mkdir(parents=True)
        assert configure_components({}, dev=str(tmp_path / f"node{index}")) == {}, device


def _run_without_osc_setting(code: str) -> subprocess.CompletedProcess:
    env = mpi_env()
    env.pop("OMPI_MCA_osc", None)
    argv = [find_mpirun(), "-np", "2", "--oversubscribe", sys.executable, "-c", code]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_no_osc_ucx_noise_on_window_creation():
    raw = _run_without_osc_setting(
        "from mpi4py import MPI\nMPI.Win.Allocate(8, 1, comm=MPI.COMM_WORLD).Free()\n"
    )
    if UCX_NOISE not in raw.stderr:
        pytest.skip("this MPI does not print the OSC UCX message even without the fix")
    ours = _run_without_osc_setting(
        "import torch, asyncddp as addp\naddp.init()\n"
        "addp.win_create(torch.zeros(4), 'x')\naddp.win_free()\naddp.shutdown()\nprint('ok')\n"
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.count("ok") == 2
    assert UCX_NOISE not in ours.stderr, ours.stderr
