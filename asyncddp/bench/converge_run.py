"""Launch ``asyncddp bench converge``: one job of workload ``converge`` per method, gathered into one result.

Each method runs as its own job through the benchmarks' launch path (``asyncddp.bench.runner``),
so ``--hostfile``, ``--emulate`` and the rest mean what they mean for ``asyncddp run``. A
method whose job fails becomes a row with its error; a task that cannot be loaded (the ranks'
``TaskError``) fails every method the same way, so it ends the bench at once with one line.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from asyncddp.bench.converge import BUILTIN_TASKS, ConvergeOptions, ConvergeResult, ConvergeRow, TaskError, ranked
from asyncddp.bench.network import network_of
from asyncddp.bench.runner import JobFailed, _run_ranks
from asyncddp.launcher.run_config import RunOptions

__all__ = ["run_converge_bench", "settings_without_a_run"]

def _launch(options: ConvergeOptions, launch: RunOptions, on_step) -> tuple[dict | None, ConvergeRow]:
    what = f"bench converge {options.method} -np {options.num_ranks}"
    try:
        data, notes, _ = _run_ranks("converge", options.to_dict(), options.num_ranks, launch, what, on_step)
    except JobFailed as error:
        if error.rank_error is not None and error.rank_error["type"] == TaskError.__name__:
            raise TaskError(error.rank_error["message"]) from None
        return None, ConvergeRow(method=options.method, error=str(error))
    row = ConvergeRow.from_dict(data["row"])
    return data["info"], replace(row, notes=(*row.notes, *notes))


def settings_without_a_run(base: ConvergeOptions) -> dict:
    """The target and learning rate when no method's run reported them (every one failed): the
    flags, else a built-in task's defaults; a user task's own are unknown here (None)."""
    target, lr, _ = BUILTIN_TASKS.get(base.task, (None, None, ""))
    return {"target_accuracy": base.target_accuracy if base.target_accuracy is not None else target,
            "lr": base.lr if base.lr is not None else lr}


def run_converge_bench(base: ConvergeOptions, methods: tuple[str, ...], launch: RunOptions = RunOptions(),
                       on_progress: Callable[[dict], None] | None = None) -> ConvergeResult:
    """Every method of ``methods`` trained with ``base``'s settings; rows ranked by time to target.

    ``on_progress`` gets ``{"method", "done", "total", "step", "steps"}``: ``done`` evaluations
    of ``total`` (over all methods) so far.
    """
    evals_per_run = -(-base.steps // base.eval_every)  # every eval_every steps, and after the last
    total = evals_per_run * len(methods)
    rows, info = [], None
    for index, method in enumerate(methods):
        done = index * evals_per_run

        def on_step(event, method=method, done=done):
            if on_progress:
                number = -(-event["step"] // base.eval_every)
                on_progress({"method": method, "done": done + number, "total": total, "step": event["step"],
                             "steps": event["steps"]})

        if on_progress:
            on_progress({"method": method, "done": done, "total": total, "step": 0, "steps": base.steps})
        found, row = _launch(replace(base, method=method), launch, on_step)
        info = info or found
        rows.append(row)
    info = info or settings_without_a_run(base)
    return ConvergeResult(task=base.task, split=base.split, num_ranks=base.num_ranks, steps=base.steps,
                          eval_every=base.eval_every, batch_size=base.batch_size, seed=base.seed,
                          target_accuracy=info["target_accuracy"], lr=info["lr"],
                          num_parameters=info.get("num_parameters", 0), train_size=info.get("train_size", 0),
                          test_size=info.get("test_size", 0), shard_sizes=tuple(info.get("shard_sizes", ())),
                          shard_classes=tuple(info.get("shard_classes", ())),
                          task_description=info.get("task_description", ""), rows=ranked(rows),
                          host=info.get("host", ""), network=network_of(launch, base.num_ranks))
