"""Every bench command fails, after printing its result, when any run it was asked for failed, and
its ``--json`` says so at the top: the real entry point in this process, with the runners replaced
by ones returning literal results (the real failing launch is in test_bench_models)."""

from __future__ import annotations

import json

import pytest

from asyncddp.bench import outcome
from asyncddp.bench.fault import FaultBenchResult, FaultRun
from asyncddp.bench.results import (CommBenchResult, CommRow, ModelBenchResult, ModelRun, StragglerOptions,
                                    StragglerResult)
from asyncddp.bench.sweep import BandwidthSweep, SweepPoint
from asyncddp.cli.main import main

LOST = "bench mlp allreduce -np 2 failed: job failed: rank 1 exited with code 1: RuntimeError: out of memory"


def _model_result(*errors: str | None) -> ModelBenchResult:
    runs = tuple(ModelRun(method=method, num_ranks=2, img_s_total=0.0 if error else 100.0, error=error)
                 for method, error in zip(("local", "allreduce"), errors))
    return ModelBenchResult(model="mlp", device="cpu", batch_size=4, image_size=32, warmup=1, iters=2, runs=runs)


def _row(op: str, num_wrong: int) -> CommRow:
    return CommRow(op=op, size_bytes=1024, count=256, dtype="float32", time_us=10.0, algbw_gbs=0.1, busbw_gbs=0.1,
                   num_wrong=num_wrong, raw_time_us=9.0, raw_busbw_gbs=0.11, ratio=1.1, raw_op_time_us=9.0,
                   op_ratio=1.1)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(list(argv))
    out, err = capsys.readouterr()
    return ended.value.code, out, err


def _failed_document(out: str, num_runs: int, failed: list[str]) -> dict:
    data = json.loads(out)  # one document
    assert {key: data[key] for key in outcome.KEYS} == {"status": "error", "exit_code": 2, "num_runs": num_runs,
                                                         "num_failed": len(failed), "failed": failed,
                                                         "missed_bound": None}
    return data


def test_a_model_bench_with_a_failed_run_exits_2_and_says_so(capsys, monkeypatch):
    monkeypatch.setattr("asyncddp.bench.runner.run_model_bench", lambda *_a, **_k: _model_result(None, LOST))
    code, out, err = _cli(capsys, "bench", "mlp", "--np", "2", "--methods", "local,allreduce", "--json")
    assert code == 2
    data = _failed_document(out, 2, [LOST])
    assert [run["error"] for run in data["runs"]] == [None, LOST]
    assert ModelBenchResult.from_dict(data) == _model_result(None, LOST)  # the printed document loads back
    assert err == f"asyncddp: error: bench mlp: 1 of 2 requested runs failed: {LOST}\n"


def test_a_model_bench_whose_runs_all_succeed_is_ok(capsys, monkeypatch):
    monkeypatch.setattr("asyncddp.bench.runner.run_model_bench", lambda *_a, **_k: _model_result(None, None))
    code, out, err = _cli(capsys, "bench", "mlp", "--np", "2", "--methods", "local,allreduce", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert {key: data[key] for key in outcome.KEYS} == {"status": "ok", "exit_code": 0, "num_runs": 2,
                                                         "num_failed": 0, "failed": [], "missed_bound": None}


def test_the_table_is_printed_before_the_failure(capsys, monkeypatch):
    monkeypatch.setattr("asyncddp.bench.runner.run_model_bench", lambda *_a, **_k: _model_result(LOST, LOST))
    code, out, err = _cli(capsys, "bench", "mlp", "--np", "2", "--methods", "local,allreduce")
    assert code == 2 and "asyncddp bench mlp" in out and "failed" in out
    (line,) = err.strip().splitlines()  # (the progress bar, gone, may leave an empty line)
    assert line.startswith("asyncddp: error: bench mlp: 2 of 2 requested runs failed: ")


def test_a_sweep_counts_every_rate(capsys, monkeypatch):
    sweep = BandwidthSweep(model="mlp", num_ranks=2, methods=("local", "allreduce"), points=(
        SweepPoint(10**9, _model_result(None, None)), SweepPoint(10**10, _model_result(None, LOST))))
    monkeypatch.setattr("asyncddp.bench.sweep.require_emulated", lambda launch: None)
    monkeypatch.setattr("asyncddp.bench.sweep.run_bandwidth_sweep", lambda *_a, **_k: sweep)
    code, out, err = _cli(capsys, "bench", "mlp", "--np", "2", "--sweep-bandwidth", "1gbit,10gbit", "--json")
    assert code == 2
    _failed_document(out, 4, [f"at 10gbit: {LOST}"])
    assert BandwidthSweep.from_dict(json.loads(out)) == sweep
    assert err.startswith("asyncddp: error: bench mlp --sweep-bandwidth: 1 of 4 requested runs failed: at 10gbit: ")


def test_a_kill_rank_bench_with_a_failed_method(capsys, monkeypatch):
    failed = FaultRun(method="win-put", num_ranks=4, guarantee="close (async)", exit_code=137, error="win-put died")
    result = FaultBenchResult(model="mlp", device="cpu", num_ranks=4, kill_rank=2, kill_at_step=7, batch_size=8,
                              image_size=32, warmup=2, iters=10, runs=(FaultRun(method="dear", num_ranks=4), failed))
    monkeypatch.setattr("asyncddp.bench.runner.fault_launch", lambda options, launch: launch)
    monkeypatch.setattr("asyncddp.bench.runner.run_fault_bench", lambda *_a, **_k: result)
    code, out, err = _cli(capsys, "bench", "mlp", "--np", "4", "--kill-rank", "2", "--json")
    assert code == 2
    assert FaultBenchResult.from_dict(_failed_document(out, 2, ["win-put died"])) == result
    assert err == "asyncddp: error: bench mlp --kill-rank 2: 1 of 2 requested runs failed: win-put died\n"


def test_comm_rows_with_wrong_values_fail_after_the_document(capsys, monkeypatch):
    result = CommBenchResult(num_ranks=2, device="cpu", dtype="float32", iters=1, warmup=0,
                             rows=(_row("allreduce", 512), _row("broadcast", 0)))
    monkeypatch.setattr("asyncddp.bench.runner.run_comm_bench", lambda *_a, **_k: result)
    code, out, err = _cli(capsys, "bench", "comm", "-np", "2", "-b", "1K", "-e", "1K", "--json")
    assert code == 2
    assert CommBenchResult.from_dict(_failed_document(out, 2, ["allreduce at 1024 B: 512 wrong values"])) == result
    assert err == ("asyncddp: error: bench comm: 1 of 2 requested runs failed: allreduce at 1024 B: 512 wrong "
                   "values\n")


def test_comm_below_min_busbw_is_exit_1_and_says_so(capsys, monkeypatch):
    result = CommBenchResult(num_ranks=2, device="cpu", dtype="float32", iters=1, warmup=0,
                             rows=(_row("allreduce", 0),))
    monkeypatch.setattr("asyncddp.bench.runner.run_comm_bench", lambda *_a, **_k: result)
    code, out, err = _cli(capsys, "bench", "comm", "-np", "2", "-b", "1K", "-e", "1K", "--min-busbw", "5", "--json")
    assert code == 1
    missed = "average busbw 0.1000 GB/s is below --min-busbw 5"
    data = json.loads(out)
    assert {key: data[key] for key in outcome.KEYS} == {"status": "error", "exit_code": 1, "num_runs": 1,
                                                         "num_failed": 0, "failed": [], "missed_bound": missed}
    assert err == f"asyncddp: error: bench comm: {missed}\n"
    # Wrong values outrank the bound: exit 2.
    monkeypatch.setattr("asyncddp.bench.runner.run_comm_bench", lambda *_a, **_k: CommBenchResult(
        num_ranks=2, device="cpu", dtype="float32", iters=1, warmup=0, rows=(_row("allreduce", 3),)))
    code, out, err = _cli(capsys, "bench", "comm", "-np", "2", "-b", "1K", "-e", "1K", "--min-busbw", "5", "--json")
    assert code == 2 and json.loads(out)["exit_code"] == 2 and json.loads(out)["missed_bound"] == missed


def test_a_straggler_result_is_one_run_that_succeeded(capsys, monkeypatch):
    result = StragglerResult(options=StragglerOptions(num_ranks=2), sync_fast_img_s=1.0, async_fast_img_s=2.0,
                             sync_slow_img_s=0.5, async_slow_img_s=0.5, sync_consensus_error=0.0,
                             async_consensus_error=0.1)
    monkeypatch.setattr("asyncddp.bench.runner.run_straggler_bench", lambda *_a, **_k: result)
    code, out, err = _cli(capsys, "bench", "straggler", "-np", "2", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["status"], data["num_runs"], data["failed"]) == ("ok", 1, [])
    assert StragglerResult.from_dict(data) == result


def test_the_message_stays_one_short_line():
    many = outcome.BenchOutcome(num_runs=50, failed=tuple(f"run {i}: " + "x" * 100 for i in range(50)))
    message = many.message("bench mlp")
    assert message.startswith("bench mlp: 50 of 50 requested runs failed: run 0: ") and message.endswith("...")
    assert len(message) < 500 and "\n" not in message


def test_a_result_type_must_say_which_runs_failed():
    with pytest.raises(TypeError, match="object has no failures"):
        outcome.outcome_of(object())
