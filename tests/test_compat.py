"""The BlueFog compatibility layer: alias installation, and the per-rank suites under mpirun."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.mpi_helpers import ROOT, run_mpi_pytest


@pytest.mark.parametrize("num_ranks", [1, 4])
def test_compat_layer_under_mpirun(num_ranks):
    run_mpi_pytest(num_ranks, "tests/mpi/test_compat_bluefog.py")


def test_compat_layer_through_the_bluefog_alias():
    run_mpi_pytest(3, "tests/mpi/test_compat_bluefog.py", env={"ASYNCDDP_TEST_BLUEFOG_ALIAS": "1"})


def test_nodes_per_machine_hierarchical_and_timeline(tmp_path):
    trace = tmp_path / "bf_timeline.json"
    run_mpi_pytest(4, "tests/mpi/test_compat_machines.py",
                   env={"BLUEFOG_NODES_PER_MACHINE": "2", "ASYNCDDP_TIMELINE": str(trace)})
    events = json.loads(trace.read_text())["traceEvents"]
    activities = {(e["pid"], e["name"], e["cat"]) for e in events if e.get("ph") == "X"}
    for rank in range(4):
        assert (rank, "grad.w", "COMPUTE") in activities
        assert (rank, "grad.b", f"FORWARD{rank}") in activities
        assert (rank, "nar.b", "neighbor_allreduce") in activities


def test_bluefog_timeline_writes_one_file_per_rank(tmp_path):
    prefix = tmp_path / "bf_tl"
    run_mpi_pytest(3, "tests/mpi/test_compat_timeline.py", env={"ASYNCDDP_TEST_BF_TIMELINE": str(prefix)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf_tl0.json", "bf_tl1.json", "bf_tl2.json"]
    for rank in range(3):
        text = (tmp_path / f"bf_tl{rank}.json").read_text()
        assert text.endswith("\n]\n")  # closed at shutdown: the whole file is JSON
        names = {e.get("name") for e in json.loads(text)}
        assert {"ENQUEUE_NEIGHBOR_ALLREDUCE", "MPI_NEIGHBOR_ALLREDUCE", "MPI_WIN_ACCUMULATE"} <= names


def test_bluefog_util_env_sets_then_restores():
    import os

    from asyncddp.compat.util import env

    os.environ["ASYNCDDP_TEST_ENV_KEPT"] = "before"
    os.environ.pop("ASYNCDDP_TEST_ENV_NEW", None)
    with env(ASYNCDDP_TEST_ENV_KEPT="during", ASYNCDDP_TEST_ENV_NEW="new", ASYNCDDP_TEST_ENV_NONE=None):
        assert os.environ["ASYNCDDP_TEST_ENV_KEPT"] == "during" and os.environ["ASYNCDDP_TEST_ENV_NEW"] == "new"
        assert "ASYNCDDP_TEST_ENV_NONE" not in os.environ
    assert os.environ.pop("ASYNCDDP_TEST_ENV_KEPT") == "before"
    assert "ASYNCDDP_TEST_ENV_NEW" not in os.environ


def test_alias_is_cheap_to_import_and_names_match():
    code = (
        "import sys, asyncddp.compat as c\n"
        "assert 'torch' not in sys.modules and 'mpi4py.MPI' not in sys.modules\n"
        "c.install_bluefog_alias(); c.install_bluefog_alias()\n"
        "import bluefog.torch as bf, bluefog.common.topology_util as tu, asyncddp.compat.bluefog as mine\n"
        "from bluefog.common import topology_util\n"
        "from bluefog.common.util import env\n"
        "import bluefog\n"
        "assert bf is mine and topology_util is tu and bluefog.torch is bf\n"
        "assert 'mpi4py.MPI' not in sys.modules\n"
        "try:\n    bf.rank()\nexcept ValueError as e:\n    print('ValueError:', e)\n"
        "print(sorted(set(bf.__all__) - set(dir(bf))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ValueError: asyncddp is not initialised: call asyncddp.init() before any communication function"
    assert lines[1] == "[]"
