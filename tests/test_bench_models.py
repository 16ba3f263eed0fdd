"""``asyncddp bench MODEL`` and ``asyncddp bench straggler``: small real runs under mpirun, and the pure parts."""

from __future__ import annotations

import json

import pytest

from asyncddp.bench import render
from asyncddp.bench.results import METHODS, ModelBenchResult, ModelRun, parse_methods, parse_num_ranks
from asyncddp.errors import ConfigError
from tests.cli import asyncddp, invoke



@pytest.mark.timeout(480)  # 13 launches (the five communication-efficient methods included)
def test_small_model_bench_runs_every_method(tmp_path):
    plot = tmp_path / "models.png"
    proc = asyncddp("bench", "mlp", "--image-size", "32", "--batch-size", "4", "--np", "2", "--iters", "2",
                    "--warmup", "1", "--json", "--plot", str(plot),
                    "--timeout", "60", timeout=460)  # a hung run becomes an error row, with the ranks' stacks on stderr
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["model"], data["device"], data["batch_size"], data["image_size"], data["iters"]) == ("mlp", "cpu", 4, 32, 2)
    assert data["num_parameters"] == 3 * 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 1000 + 1000
    assert [(run["method"], run["num_ranks"]) for run in data["runs"]] == [(method, 2) for method in METHODS]
    for run in data["runs"]:
        assert run["error"] is None, proc.stderr
        assert run["img_s_total"] > 0 and run["iter_ms"] > 0 and run["compute_ms"] > 0
        assert len(run["iter_ms_per_rank"]) == 2
        assert run["img_s_total"] == pytest.approx(sum(4e3 / t for t in run["iter_ms_per_rank"]))
        assert 0.0 <= run["comm_share"] < 1.0
        assert run["efficiency_vs_np1"] is None  # no np=1 run asked for
    local, ddp = data["runs"][:2]
    assert local["efficiency_vs_local"] == 1.0 and ddp["speed_vs_ddp"] == 1.0
    assert plot.stat().st_size > 10_000


@pytest.mark.timeout(60)
def test_straggler_bench_reports_both_phases():
    proc = asyncddp("bench", "straggler", "-np", "2", "--iters", "4", "--warmup", "1", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["options"]["slow_rank"] == 1 and data["options"]["slow_factor"] == 2.0
    for key in ("sync_fast_img_s", "async_fast_img_s", "sync_slow_img_s", "async_slow_img_s"):
        assert data[key] > 0
    # Two ranks averaging with each other every step (ATC) hold the same weights afterwards.
    assert data["sync_consensus_error"] < 1e-6
    assert data["async_consensus_error"] >= 0
    assert data["speedup"] == pytest.approx(data["async_fast_img_s"] / data["sync_fast_img_s"])


@pytest.mark.timeout(60)
def test_a_failed_run_is_a_row_then_a_failed_command():
    proc = asyncddp("bench", "mlp", "--image-size", "32", "--np", "1", "--methods", "local", "--timeout", "0.5", "--json", timeout=120)
    assert proc.returncode == 2, proc.stderr
    data = json.loads(proc.stdout)
    (run,) = data["runs"]
    assert run["method"] == "local" and run["img_s_total"] == 0.0
    assert run["error"].startswith("bench mlp local -np 1 failed: ")
    assert (data["status"], data["exit_code"], data["num_runs"], data["failed"]) == ("error", 2, 1, [run["error"]])
    assert proc.stderr.strip().splitlines()[-1] == f"asyncddp: error: bench mlp: 1 of 1 requested runs failed: {run['error']}"


@pytest.mark.parametrize("args, message", [
    (["bench", "mlp", "--methods", "nope"], "--methods 'nope'"),
    (["bench", "mlp", "--np", "0,2"], "--np '0,2'"),
    (["bench", "mlp", "--image-size", "8"], "image size >= 32"),
    (["bench", "mlp", "--device", "tpu"], "--device tpu"),
    (["bench", "mlp", "--plot", "x.jpg"], "--plot x.jpg"),
    (["bench", "mlp", "--sync-every", "0"], "--sync-every 0: give at least 1 local step per outer step"),
    (["bench", "straggler", "-np", "2", "--slow-rank", "2"], "--slow-rank 2"),
    (["bench", "straggler", "--slow-factor", "0.5"], "--slow-factor 0.5"),
    (["bench", "straggler", "--model", "nope"], "choose resnet18, resnet50, vgg16, mobilenet_v3, transformer or mlp"),
])
def test_bad_options_give_one_line_errors(args, message):
    proc = invoke(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("asyncddp: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("image_size", [32, 64])
def test_mobilenet_v3_has_torchvisions_parameter_count_and_shape(image_size):
    import torch

    from asyncddp.bench_ranks.models import build_model

    model = build_model("mobilenet_v3", image_size)
    # torchvision's mobilenet_v3_large at 1000 classes; ours (used without torchvision) must match it.
    assert sum(p.numel() for p in model.parameters()) == 5_483_032
    with torch.no_grad():
        assert model(torch.randn(2, 3, image_size, image_size)).shape == (2, 1000)


@pytest.mark.timeout(60)
def test_mobilenet_v3_bench_runs():
    proc = asyncddp("bench", "mobilenet_v3", "--np", "1", "--methods", "local", "--image-size", "32", "--batch-size",
                    "2", "--iters", "1", "--warmup", "0", "--timeout", "50", "--json", timeout=55)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["model"], data["num_parameters"]) == ("mobilenet_v3", 5_483_032)
    (run,) = data["runs"]
    assert (run["method"], run["num_ranks"], run["error"]) == ("local", 1, None), proc.stderr
    assert run["img_s_total"] > 0 and run["iter_ms"] > 0


def test_parsers():
    assert parse_num_ranks("4,1,2,2") == (1, 2, 4)
    assert parse_methods(None) == METHODS
    assert parse_methods(["win-put,local", "ddp"]) == ("local", "ddp", "win-put")
    with pytest.raises(ConfigError):
        parse_num_ranks("a")


def _result(*runs: ModelRun) -> ModelBenchResult:
    return ModelBenchResult(model="mlp", device="cpu", batch_size=8, image_size=32, warmup=1, iters=2, runs=runs)


def test_derived_ratios_and_rendering():
    result = _result(ModelRun("local", 1, img_s_total=100.0), ModelRun("local", 2, img_s_total=180.0),
                     ModelRun("ddp", 2, img_s_total=150.0), ModelRun("win-put", 2, img_s_total=160.0),
                     ModelRun("dear", 2, error="bench failed: boom"))
    data = result.to_dict()
    by = {(run["method"], run["num_ranks"]): run for run in data["runs"]}
    assert by[("local", 2)]["efficiency_vs_np1"] == pytest.approx(0.9)
    assert by[("win-put", 2)]["efficiency_vs_local"] == pytest.approx(160 / 180)
    assert by[("win-put", 2)]["speed_vs_ddp"] == pytest.approx(160 / 150)
    assert by[("win-put", 2)]["efficiency_vs_np1"] is None
    assert by[("dear", 2)]["speed_vs_ddp"] is None
    assert ModelBenchResult.from_dict(json.loads(json.dumps(data))) == result
    rows = render.model_rows(result)
    assert rows[1][:3] == ["local", "2", "180.0"] and rows[1][5] == "90.0%"
    assert rows[3][8] == "1.07x"
    assert rows[4][2:4] == ["failed", "bench failed: boom"]
