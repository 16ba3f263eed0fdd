"""``asyncddp bench comm`` end to end: the real CLI launching 2 real ranks through mpirun."""

from __future__ import annotations

import json
import sys

import pytest

from asyncddp.bench.results import OPS
from tests.cli import asyncddp, invoke

SMALL = ("-np", "2", "--min-bytes", "1K", "--max-bytes", "16K", "--step-factor", "4", "--iters", "2", "--warmup", "1")
ROW_KEYS = {"op", "size_bytes", "count", "dtype", "time_us", "algbw_gbs", "busbw_gbs", "num_wrong",
            "raw_time_us", "raw_busbw_gbs", "ratio", "raw_op_time_us", "op_ratio"}


@pytest.mark.timeout(120)
def test_small_bench_runs_every_op_correctly(tmp_path):
    plot = tmp_path / "bw.png"
    done = asyncddp("bench", "comm", *SMALL, "--json", "--plot", str(plot), timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {"num_ranks", "device", "dtype", "iters", "warmup", "rows", "host", "mpi_library",
            "avg_busbw_gbs", "num_wrong"} <= set(data)
    assert (data["num_ranks"], data["device"], data["dtype"], data["iters"]) == (2, "cpu", "float32", 2)
    rows = data["rows"]
    assert [(row["op"], row["size_bytes"]) for row in rows] == [(op, size) for op in OPS for size in (1024, 4096, 16384)]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["count"] == row["size_bytes"] // 4 // (2 if row["op"] == "allgather" else 1)
        assert row["time_us"] > 0 and row["busbw_gbs"] > 0 and row["raw_time_us"] > 0 and row["raw_busbw_gbs"] > 0
        assert row["ratio"] == pytest.approx(row["time_us"] / row["raw_time_us"], rel=0.01)
        assert row["raw_op_time_us"] > 0
        assert row["op_ratio"] == pytest.approx(row["time_us"] / row["raw_op_time_us"], rel=0.01)
        if "neighbor_allreduce" not in row["op"]:  # raw already is the whole op there
            assert row["raw_op_time_us"] == row["raw_time_us"] and row["op_ratio"] == row["ratio"]
        assert row["num_wrong"] == 0, row
    # 2 ranks: every factor is 1 except allgather's (n-1)/n (hierarchical on one machine is an allreduce).
    for row in rows:
        factor = 0.5 if row["op"] == "allgather" else 1.0
        assert row["busbw_gbs"] == pytest.approx(row["algbw_gbs"] * factor, rel=1e-3, abs=1e-6)
    assert data["num_wrong"] == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(120)
def test_min_busbw_above_reach_exits_1_after_printing_the_table():
    done = asyncddp("bench", "comm", *SMALL, "--ops", "allreduce", "--plain", "--min-busbw", "1e9", timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("asyncddp: error: bench comm: average busbw ")
    assert "below --min-busbw 1e+09" in done.stderr
    assert "# Out of bounds values : 0 OK" in done.stdout
    assert sum(line.split()[0] == "allreduce" for line in done.stdout.splitlines() if line.strip()) == 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,message", [
    (("-np", "1"), "-np 1: bench comm needs at least 2 ranks"),
    (("--min-bytes", "1X"), "--min-bytes '1X': give a byte count"),
    (("--min-bytes", "64K", "--max-bytes", "1K"), "swap them"),
    (("--step-factor", "1"), "--step-factor 1"),
    (("--ops", "alltoall"), "--ops 'alltoall' is not a benchmarked op"),
    (("--dtype", "int8"), "--dtype int8: choose one of float32, float64"),
    (("--iters", "0"), "need iters >= 1"),
    (("--device", "tpu"), "--device tpu: choose cpu or cuda"),
    (("--plot", "/nonexistent/dir/x.png"), "does not exist or is not writable"),
    (("--hostfile", "/nonexistent/hosts"), "/nonexistent/hosts"),
])
def test_bad_options_give_one_line_errors(args, message):
    done = invoke("bench", "comm", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncddp: error: ") and message in lines[0], done.stderr


@pytest.mark.timeout(60)
def test_cuda_without_gpu_is_a_one_line_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here; this checks the no-GPU message")
    done = invoke("bench", "comm", "--device", "cuda")
    assert done.returncode == 2
    assert done.stderr.strip() == ("asyncddp: error: --device cuda: no CUDA GPU is visible here "
                                   "(torch.cuda.is_available() is False); use --device cpu")


@pytest.mark.timeout(60)
def test_a_failing_rank_becomes_one_bench_error_naming_the_rank_and_cause():
    # Skip the CLI's own GPU check so that the ranks themselves fail: the runner's failure path.
    import torch

    from asyncddp.bench.results import BenchError, CommBenchOptions
    from asyncddp.bench.runner import run_comm_bench

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here, so the ranks would not fail")
    options = CommBenchOptions(num_ranks=2, sizes=(1024,), iters=1, warmup=0, ops=("allreduce",), device="cuda")
    with pytest.raises(BenchError) as caught:
        run_comm_bench(options)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("bench comm failed: job failed: rank ")
    assert text.endswith("BenchError: --device cuda: torch sees no CUDA device on this host; use --device cpu")


MUTANT = """
import sys
import asyncddp.comm as addp
import asyncddp.bench_ranks.__main__ as ranks

right = addp.allreduce_
addp.allreduce_ = lambda x, average=False: right(x, average=True)  # averages where a sum is due
sys.exit(ranks.main(["comm", *sys.argv[1:]]))
"""


@pytest.mark.timeout(60)
def test_wrong_results_are_counted(tmp_path):
    # The check must catch an op that returns the wrong value: here allreduce averaging instead of summing.
    from tests.mpi_helpers import run_mpi

    result = tmp_path / "result.json"
    options = {"num_ranks": 2, "sizes": [1024], "iters": 1, "warmup": 0, "dtype": "float32",
               "ops": ["allreduce", "broadcast"], "device": "cpu", "progress": False}
    done = run_mpi(2, [sys.executable, "-c", MUTANT, json.dumps(options), str(result)])
    assert done.returncode == 0, done.stderr
    rows = json.loads(result.read_text())["rows"]
    assert [(row["op"], row["num_wrong"]) for row in rows] == [("allreduce", 2 * 256), ("broadcast", 0)]
