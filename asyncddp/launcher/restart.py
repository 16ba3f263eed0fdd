"""Whole-job restart, the second line of defence: ``asyncddp run --max-restarts K``.

What in-place recovery cannot survive (mpirun itself killed, a node lost without ULFM, an MPI that
cannot keep a job alive) ends the job; ``run_with_restarts`` then relaunches the same plan, all
ranks, up to ``max_restarts`` times, with ``ASYNCDDP_RESTART_COUNT`` telling the ranks which launch
this is (a script resumes from its ``asyncddp.save_checkpoint`` file). Each relaunch is announced
on stderr with the failure that caused it. A script that fails at once every time is not relaunched
forever: two launches in a row that fail within ``QUICK_FAILURE_S`` of starting end the loop.
A job that succeeds, or that the user interrupts (Ctrl-C), is never relaunched.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import IO, Callable

from asyncddp.launcher.job import JobResult, run_plan
from asyncddp.launcher.plan import LaunchPlan

__all__ = ["run_with_restarts", "QUICK_FAILURE_S", "RESTART_ENV"]

RESTART_ENV = "ASYNCDDP_RESTART_COUNT"
QUICK_FAILURE_S = 10.0
_RELAUNCHED = ("failed", "timeout")


def run_with_restarts(plan: LaunchPlan, max_restarts: int, *, output_dir: str | None = None,
                      timeout: float | None = None, err: IO[str] | None = None,
                      run: Callable[..., JobResult] = run_plan, quick_failure_s: float = QUICK_FAILURE_S) -> JobResult:
    """Run ``plan``, relaunching it after a failure at most ``max_restarts`` times; the last
    launch's result, its summary saying how many launches there were and why the loop stopped.
    Launch k (from 0) writes its logs to ``output_dir`` (k = 0) or ``output_dir/restart.k``."""
    err = err or sys.stderr
    if max_restarts == 0:
        return run(plan, output_dir=output_dir, timeout=timeout)
    quick_in_a_row = count = 0
    while True:
        env = {**plan.env, RESTART_ENV: str(count)}
        logs = output_dir if not output_dir or count == 0 else os.path.join(output_dir, f"restart.{count}")
        result = run(replace(plan, env=env), output_dir=logs, timeout=timeout)
        if result.exit_code == 0 or result.reason not in _RELAUNCHED:
            return _noted(result, count, "")
        quick_in_a_row = quick_in_a_row + 1 if result.duration_s < quick_failure_s else 0
        if quick_in_a_row >= 2:
            return _noted(result, count, f"; not relaunched: the last two launches failed within "
                                         f"{quick_failure_s:g} s of starting, so a relaunch would fail too")
        if count == max_restarts:
            return _noted(result, count, f"; not relaunched: --max-restarts {max_restarts} used up")
        count += 1
        print(f"asyncddp: relaunching the job ({count} of {max_restarts}, {RESTART_ENV}={count}) "
              f"after {result.duration_s:.1f} s: {result.summary or result.reason}", file=err, flush=True)


def _noted(result: JobResult, count: int, why: str) -> JobResult:
    """``result`` with its summary saying which launch it was."""
    if count == 0 and not why:
        return result
    launches = f"launch {count + 1} of the job (after {count} restart{'s' if count != 1 else ''})"
    summary = f"{result.summary or 'asyncddp: job finished'} [{launches}{why}]"
    return replace(result, summary=summary)
