"""``asyncddp bench converge``: small real runs under mpirun, bad flags, and the pure parts (split, ranking, table)."""

from __future__ import annotations

import json

import pytest

from asyncddp.bench import converge_render, outcome
from asyncddp.bench.converge import (ConvergeEval, ConvergeResult, ConvergeRow, check_target, first_at_target,
                                     parse_split, parse_task, ranked, split_indices)
from asyncddp.bench.fault import CANNOT_SURVIVE, GUARANTEES, SURVIVING_METHODS
from asyncddp.bench.methods import METHODS
from asyncddp.bench.results import METHODS as METHOD_NAMES
from asyncddp.comm import traffic
from asyncddp.errors import ConfigError
from tests.cli import asyncddp, invoke

ROW_KEYS = {"method", "final_accuracy", "min_rank_accuracy", "averaged_model_accuracy", "time_to_target_s",
            "steps_to_target", "bytes_sent_per_rank", "steps", "consensus_distance"}


@pytest.mark.timeout(400)
def test_a_short_run_of_three_methods(tmp_path):
    plot = tmp_path / "converge.png"
    steps = 30
    proc = asyncddp("bench", "converge", "-np", "2", "--task", "synthetic", "--steps", str(steps), "--eval-every", "10",
                    "--width", "16", "--methods", "ddp,allreduce,neighbor-one-peer", "--json", "--plot", str(plot),
                    "--timeout", "120", timeout=380)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["task"], data["split"], data["num_ranks"], data["target_accuracy"], data["status"]) == \
        ("synthetic", "iid", 2, 0.8, "ok")
    assert sum(data["shard_sizes"]) == data["train_size"] == 4096 and data["test_size"] == 1024
    params = 16 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4
    assert data["num_parameters"] == params
    assert sorted(row["method"] for row in data["rows"]) == ["allreduce", "ddp", "neighbor-one-peer"]
    for row in data["rows"]:
        assert ROW_KEYS <= set(row), row.keys()
        assert row["error"] is None and row["steps"] == steps
        curve = row["curve"]
        assert [point["step"] for point in curve] == [0, 10, 20, 30]
        assert curve[-1]["mean_accuracy"] > curve[0]["mean_accuracy"] + 0.1  # it learns
        assert row["final_accuracy"] == curve[-1]["mean_accuracy"]
        assert row["min_rank_accuracy"] <= row["final_accuracy"]
        # Two ranks, each rank's payload per step is every parameter once (float32): gradients
        # allreduced (2(n-1)/n = 1), or the parameters sent to the one peer.
        assert row["bytes_sent_per_rank"] >= steps * 4 * params
    kinds = {row["method"]: row["bytes_by_kind"] for row in data["rows"]}
    assert kinds["allreduce"]["allreduce"] == steps * 4 * params
    assert kinds["neighbor-one-peer"]["neighbor_allreduce"] == steps * 4 * params
    ddp = next(row for row in data["rows"] if row["method"] == "ddp")
    assert ddp["bytes_counted"] == "computed" and ddp["bytes_sent_per_rank"] == steps * 4 * params
    assert plot.stat().st_size > 10_000


@pytest.mark.timeout(200)
def test_a_user_task_module_loads():
    proc = asyncddp("bench", "converge", "-np", "2", "--task", "tests.converge_task:make_task", "--steps", "6",
                    "--eval-every", "3", "--methods", "allreduce", "--lr", "0.1", "--json", "--timeout", "90",
                    timeout=180)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["train_size"], data["test_size"], data["num_parameters"]) == (512, 256, 8 * 4 + 4)
    (row,) = data["rows"]
    assert row["final_accuracy"] >= 0.9 and row["steps_to_target"] is not None


@pytest.mark.timeout(200)
@pytest.mark.parametrize("function, words", [
    ("not_a_task", "not_a_task() must return (model, train_dataset, test_dataset)"),
    ("wrong_input_size", "the model cannot take the train inputs of shape (8,) (RuntimeError: mat1 and mat2"),
    ("too_few_classes", "the train set has 64 inputs and 64 labels from 0 to 3; the model scores 2 classes"),
    ("bad_target", "its target_accuracy is 'high'; give an accuracy in (0, 1]"),
])
def test_a_task_the_ranks_cannot_use_is_one_line_and_json(function, words):
    # Found on the ranks, before any method trains: the whole of stderr is that one line (no
    # traceback, no MPI_ABORT banner) and the bench ends at once rather than failing each method.
    proc = asyncddp("bench", "converge", "-np", "2", "--task", f"tests.converge_task:{function}", "--steps", "2",
                    "--methods", "allreduce,dear", "--json", "--timeout", "90", timeout=180)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"asyncddp: error: --task tests.converge_task:{function}: "), \
        proc.stderr
    assert words in lines[0]
    document = json.loads(proc.stdout)
    assert (document["status"], document["error_type"]) == ("error", "TaskError") and words in document["error"]


@pytest.mark.parametrize("flags, words", [
    (("--task", "nosuch"), "--task 'nosuch': give digits, synthetic or module:function"),
    (("--task", "no_such_module_here:make"), "no module named no_such_module_here"),
    (("--split", "dirichlet:0"), "--split 'dirichlet:0': give iid, by-label or dirichlet:ALPHA"),
    (("--split", "shuffled"), "--split 'shuffled'"),
    (("--target-accuracy", "1.5"), "--target-accuracy 1.5: give an accuracy in (0, 1]"),
    (("--target-accuracy", "nan"), "--target-accuracy nan"),
    (("--methods", "sgd"), "--methods 'sgd' is not a method"),
    (("--sync-every", "0"), "--sync-every 0: each must be at least 1"),
])
@pytest.mark.parametrize("as_json", [False, True])
def test_bad_flags_are_one_line_and_json(flags, words, as_json):
    if as_json:  # the JSON error document as the real process prints it on stdout
        proc = asyncddp("bench", "converge", "-np", "2", *flags, "--json", timeout=60)
    else:
        proc = invoke("bench", "converge", "-np", "2", *flags)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr
    if as_json:
        document = json.loads(proc.stdout)
        assert document["status"] == "error" and words in document["error"]
    else:
        assert proc.stdout == ""


# ---- pure parts ---------------------------------------------------------------------------------
LABELS = [i % 10 for i in range(1437)]


@pytest.mark.parametrize("split", ["iid", "by-label", "dirichlet:0.1", "dirichlet:100"])
@pytest.mark.parametrize("num_ranks", [2, 3, 4, 8])
def test_shards_are_disjoint_and_cover_the_training_set(split, num_ranks):
    shards = split_indices(LABELS, num_ranks, split, seed=0)
    assert len(shards) == num_ranks and all(shards)
    every = [index for shard in shards for index in shard]
    assert sorted(every) == list(range(len(LABELS)))  # each index exactly once
    assert shards == split_indices(LABELS, num_ranks, split, seed=0)  # the same on every rank
    if split in ("iid", "by-label"):
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_label_skew_of_each_split():
    def labels_per_shard(split):
        return [len({LABELS[i] for i in shard}) for shard in split_indices(LABELS, 4, split, seed=0)]

    assert labels_per_shard("iid") == [10, 10, 10, 10]
    assert max(labels_per_shard("by-label")) <= 4  # 10 labels cut into 4 contiguous runs
    def skew(shards):  # mean over ranks of the label distribution's total variation from uniform
        counts = [[sum(1 for i in shard if LABELS[i] == label) / len(shard) for label in range(10)]
                  for shard in shards]
        return sum(0.5 * sum(abs(p - 0.1) for p in row) for row in counts) / len(shards)

    skewed = split_indices(LABELS, 4, "dirichlet:0.1", seed=0)
    assert skew(skewed) > 0.4 and skew(split_indices(LABELS, 4, "iid", seed=0)) < 0.1
    assert skew(split_indices(LABELS, 4, "dirichlet:100", seed=0)) < 0.1
    assert split_indices(LABELS, 4, "dirichlet:0.1", seed=1) != skewed


def test_too_few_samples_for_the_ranks():
    with pytest.raises(ConfigError, match="too few for 8 ranks"):
        split_indices([0, 1, 2], 8, "iid", seed=0)


def test_flag_parsers():
    assert parse_split("dirichlet:0.50") == "dirichlet:0.5" and parse_split(" iid ") == "iid"
    assert parse_task("digits") == "digits" and parse_task("tests.converge_task:make_task")
    assert check_target(None) is None and check_target(1.0) == 1.0
    for bad in (0.0, -0.1, float("inf")):
        with pytest.raises(ConfigError):
            check_target(bad)


def _point(step, accuracy):
    return ConvergeEval(step=step, time_s=step / 10, bytes_sent=1000.0 * step, mean_accuracy=accuracy,
                        min_accuracy=accuracy, averaged_accuracy=accuracy, mean_loss=1 - accuracy,
                        consensus_distance=0.0)


def test_first_at_target_and_ranking():
    curve = (_point(0, 0.1), _point(10, 0.85), _point(20, 0.95), _point(30, 0.9))
    assert first_at_target(curve, 0.9).step == 20 and first_at_target(curve, 0.99) is None
    rows = [ConvergeRow("slow", final_accuracy=0.95, time_to_target_s=3.0),
            ConvergeRow("never", final_accuracy=0.5), ConvergeRow("broken", error="job failed"),
            ConvergeRow("never-but-close", final_accuracy=0.8), ConvergeRow("fast", final_accuracy=0.92, time_to_target_s=1.0)]
    assert [row.method for row in ranked(rows)] == ["fast", "slow", "never-but-close", "never", "broken"]


def test_result_round_trips_and_renders(tmp_path):
    rows = (ConvergeRow("ddp", 0.95, 0.94, 0.95, 2.0, 20, 4e6, 30, 0.0, curve=(_point(0, 0.1), _point(20, 0.95)),
                        bytes_counted="computed"),
            ConvergeRow("neighbor-one-peer", 0.93, 0.9, 0.94, 1.0, 20, 2e6, 30, 1e-3,
                        curve=(_point(0, 0.1), _point(20, 0.93))),
            ConvergeRow("win-put", error="bench converge win-put -np 4 failed: boom"))
    result = ConvergeResult(task="digits", split="iid", num_ranks=4, target_accuracy=0.9, steps=30, eval_every=10,
                            batch_size=32, lr=0.05, seed=0, rows=ranked(rows))
    data = json.loads(json.dumps(outcome.document(result)))
    assert (data["status"], data["num_runs"], data["num_failed"]) == ("error", 3, 1)
    assert data["failed"] == ["win-put: bench converge win-put -np 4 failed: boom"]
    assert ConvergeResult.from_dict(data) == result
    cells = converge_render.converge_rows(result)
    assert [c[0] for c in cells] == ["neighbor-one-peer", "ddp", "win-put"]
    assert cells[0][-1] == "0.50x" and cells[1][7] == "4.00 (computed)" and cells[2][1] == "failed"
    converge_render.converge_plot(result, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_every_registered_method_is_a_converge_method():
    assert METHOD_NAMES == tuple(METHODS)
    assert all(METHODS[name].wrap is not None for name in METHOD_NAMES if name not in ("local", "ddp"))
    assert SURVIVING_METHODS == ("allreduce", "dear", "neighbor-exp2", "neighbor-one-peer", "hierarchical", "win-put",
                                 "choco-topk", "choco-int8", "local-sgd", "diloco-gossip", "diloco-allreduce")
    assert set(CANNOT_SURVIVE) == {"local", "ddp"} and set(GUARANTEES) == set(SURVIVING_METHODS)


def test_collective_volumes():
    assert traffic.allreduce_bytes(4000, 2) == 4000 and traffic.allreduce_bytes(4000, 4) == 6000
    assert traffic.reduce_scatter_bytes(4000, 4) == 3000 and traffic.allgather_bytes(1000, 4) == 3000
    assert traffic.broadcast_bytes(4000, 4) == 3000 and traffic.allreduce_bytes(4000, 1) == 0


def test_settings_reported_when_no_method_ran_are_the_real_ones_or_null():
    # Every method failed: the task's own defaults (or the flags), never a made-up 0.0.
    from asyncddp.bench.converge import ConvergeOptions
    from asyncddp.bench.converge_run import settings_without_a_run

    assert settings_without_a_run(ConvergeOptions(task="digits")) == {"target_accuracy": 0.9, "lr": 0.05}
    assert settings_without_a_run(ConvergeOptions(task="synthetic", lr=0.2)) == {"target_accuracy": 0.8, "lr": 0.2}
    assert settings_without_a_run(ConvergeOptions(task="m:f")) == {"target_accuracy": None, "lr": None}
    result = ConvergeResult(task="m:f", split="iid", num_ranks=2, target_accuracy=None, steps=2, eval_every=1,
                            batch_size=8, lr=None, seed=0, rows=(ConvergeRow("ddp", error="job failed"),))
    assert "target -," in converge_render.title(result) and "lr -," in converge_render.title(result)
