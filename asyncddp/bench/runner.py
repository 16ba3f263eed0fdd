"""Launch a benchmark's ranks through ``asyncddp run``'s planning path and collect rank 0's result.

Every benchmark runs ``python -m mpi4py -m asyncddp.bench_ranks WORKLOAD OPTIONS_JSON RESULT_PATH``
(workload ``comm``, ``training`` once per (method, np), ``straggler``, ``fault`` once per method
as a fault-tolerant job), planned by
``asyncddp.launcher.prepare.plan_job`` from the same ``RunOptions`` as ``asyncddp run`` (so
``--hostfile/-H/--config`` mean the same) and executed by ``asyncddp.launcher.job.run_plan``. Rank 0's
stdout is parsed line by line: progress lines feed ``on_progress``, and its result arrives both
as a file (local rank 0) and as one tagged line (rank 0 on another host). A failed job becomes a
``BenchError`` naming the rank and the error it printed; a job stopped by SIGINT, SIGTERM or SIGHUP
ends the whole benchmark (``stop_signals.Stopped``) once its ranks and files are gone.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from asyncddp.bench.network import network_of
from asyncddp.bench.results import (ERROR_TAG, PROGRESS_TAG, RESULT_TAG, BenchError, CommBenchOptions, CommBenchResult,
                                    ModelBenchOptions, ModelBenchResult, ModelRun, StragglerOptions, StragglerResult)
from asyncddp.launcher import stop_signals
from asyncddp.launcher.run_config import RunOptions

if TYPE_CHECKING:
    from asyncddp.bench.fault import FaultBenchOptions, FaultBenchResult
    from asyncddp.launcher.job import JobResult

__all__ = ["run_comm_bench", "run_model_bench", "run_straggler_bench", "run_fault_bench", "fault_launch", "JobFailed",
           "ranks_on_this_machine"]

YIELD_ENV = "OMPI_MCA_mpi_yield_when_idle"  # set by the plan when local ranks outnumber cores
FAILURE_TAIL_LINES = 60
_RANK_LINE = re.compile(r"^\[(\d+)\] (.*)$")
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


class _Lines:
    """A file-like sink for ``run_plan``: splits ``[rank] text`` lines, keeps a tail for errors."""

    def __init__(self, on_progress: Callable[[dict], None] | None) -> None:
        self.on_progress = on_progress
        self.pending = ""
        self.result: dict | None = None
        self.error: dict | None = None  # the first ERROR_TAG a rank printed: {"type", "message"}
        self.tail: collections.deque[str] = collections.deque(maxlen=200)

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        pass

    def _line(self, line: str) -> None:
        match = _RANK_LINE.match(line)
        rank, text = (int(match.group(1)), match.group(2)) if match else (None, line)
        if rank == 0 and text.startswith(PROGRESS_TAG + " "):
            if self.on_progress is not None:
                self.on_progress(json.loads(text[len(PROGRESS_TAG) + 1:]))
        elif rank is not None and text.startswith(RESULT_TAG + " "):  # rank 0 lost: the survivors' rank 0
            self.result = json.loads(text[len(RESULT_TAG) + 1:])
        elif rank is not None and text.startswith(ERROR_TAG + " "):
            if self.error is None:
                self.error = json.loads(text[len(ERROR_TAG) + 1:])
        else:
            self.tail.append(line)

    def rank_error(self) -> str | None:
        """The last ``SomeError: message`` line a rank printed (the end of its traceback)."""
        for line in reversed(self.tail):
            match = _RANK_LINE.match(line)
            found = _ERROR_LINE.match(match.group(2) if match else "")
            if found:
                return f"{found.group(1)}: {found.group(2)}"
        return None


def _plan(workload: str, args: tuple[str, ...], num_ranks: int, launch: RunOptions, private_dir: str):
    from asyncddp.launcher.prepare import plan_job

    options = replace(launch, command=("-m", "asyncddp.bench_ranks", workload, *args), num_ranks=num_ranks)
    return plan_job(options, private_dir)


def _launch_notes(plan, num_ranks: int) -> tuple[str, ...]:
    """What the launch adapted that changes the figures (said beside the results)."""
    if plan.env.get(YIELD_ENV) == "1" and YIELD_ENV not in os.environ:
        return (f"{num_ranks} ranks on {os.cpu_count()} cores: oversubscribed, launched with {YIELD_ENV}=1",)
    return ()


class JobFailed(BenchError):
    """A benchmark's job did not end well; ``job_exit_code`` is the exit code it ended with;
    ``rank_error``: ``{"type", "message"}`` of the error a rank raised on purpose, if it did."""

    def __init__(self, message: str, job_exit_code: int, rank_error: dict | None = None) -> None:
        super().__init__(message)
        self.job_exit_code = job_exit_code
        self.rank_error = rank_error


def _run_ranks(workload: str, payload: dict, num_ranks: int, launch: RunOptions, what: str,
               on_progress: Callable[[dict], None] | None = None) -> tuple[dict, tuple[str, ...], JobResult]:
    """Launch ``workload OPTIONS_JSON RESULT_PATH`` on ``num_ranks`` ranks; rank 0's JSON, launch
    notes and how the job ended."""
    from asyncddp.launcher.job import run_plan
    from asyncddp.launcher.prepare import check_ssh, job_running

    with stop_signals.private_dir("asyncddp-bench-") as workdir:
        result_path = str(Path(workdir) / "result.json")
        planned = _plan(workload, (json.dumps(payload), result_path), num_ranks, launch, workdir)
        check_ssh(planned)
        notes = _launch_notes(planned.plan, num_ranks)
        out, err = _Lines(on_progress), _Lines(None)
        with job_running(planned):
            job = run_plan(planned.plan, timeout=planned.config.timeout, out=out, err=err)
        if job.reason == "interrupted":  # the user stopped it: no further launch, no error row
            raise stop_signals.Stopped(job.exit_code - 128, "all ranks were stopped")
        if job.exit_code != 0:
            summary = (job.summary or f"job exited with code {job.exit_code}").removeprefix("asyncddp: ")
            if out.error is not None:  # a rank said what went wrong in one line: no stderr to show
                raise JobFailed(f"{what} failed: {summary}: {out.error['type']}: {out.error['message']}",
                                job.exit_code, out.error)
            cause = err.rank_error() or out.rank_error()
            # The table gets one line; the ranks' last stderr lines (a traceback, or each rank's
            # stack on --timeout) go to stderr so the failure can be diagnosed.
            lines = list(err.tail)[-FAILURE_TAIL_LINES:]
            if lines:
                print(f"# {what}: {summary}; last lines of the ranks' stderr:", *lines, sep="\n", file=sys.stderr)
            raise JobFailed(f"{what} failed: {summary}" + (f": {cause}" if cause else ""), job.exit_code)
        data = out.result
        if os.path.isfile(result_path):
            data = json.loads(Path(result_path).read_text())
        if data is None:
            last = out.tail[-1] if out.tail else "(no output)"
            raise JobFailed(f"{what}: the job exited 0 but rank 0 reported no result; its last line: {last}", 0)
    return data, notes, job


def run_comm_bench(options: CommBenchOptions, launch: RunOptions = RunOptions(),
                   on_progress: Callable[[dict], None] | None = None) -> CommBenchResult:
    """Run workload ``comm`` on ``options.num_ranks`` ranks and return rank 0's result."""
    data, notes, _ = _run_ranks("comm", options.to_dict(), options.num_ranks, launch, "bench comm",
                             on_progress)
    result = CommBenchResult.from_dict(data)
    return replace(result, notes=(*result.notes, *notes), network=network_of(launch, options.num_ranks))


def run_model_bench(base: ModelBenchOptions, methods: tuple[str, ...], rank_counts: tuple[int, ...],
                    launch: RunOptions = RunOptions(),
                    on_progress: Callable[[dict], None] | None = None) -> ModelBenchResult:
    """One launch of workload ``training`` per (np, method); a failed launch is a row with its error.

    ``on_progress`` gets ``{"done", "total", "method", "num_ranks", "starting"}`` before and after each run.
    """
    runs, params, host = [], 0, ""
    pairs = [(n, m) for n in rank_counts for m in methods]
    for done, (num_ranks, method) in enumerate(pairs):
        event = {"done": done, "total": len(pairs), "method": method, "num_ranks": num_ranks}
        if on_progress:
            on_progress({**event, "starting": True})
        options = replace(base, method=method, num_ranks=num_ranks)
        try:
            data, notes, _ = _run_ranks("training", options.to_dict(), num_ranks, launch,
                                     f"bench {base.model} {method} -np {num_ranks}")
            run = ModelRun.from_dict(data["run"])
            runs.append(replace(run, notes=(*run.notes, *notes)))
            params, host = data["num_parameters"], data["host"]
        except BenchError as error:
            runs.append(ModelRun(method=method, num_ranks=num_ranks, error=str(error)))
        if on_progress:
            on_progress({**event, "done": done + 1, "starting": False})
    return ModelBenchResult(model=base.model, device=base.device, batch_size=base.batch_size,
                            image_size=base.image_size, warmup=base.warmup, iters=base.iters,
                            num_parameters=params, runs=tuple(runs), host=host,
                            network=network_of(launch, max(rank_counts)))


def run_straggler_bench(options: StragglerOptions, launch: RunOptions = RunOptions()) -> StragglerResult:
    """Run workload ``straggler`` once; errors propagate as ``BenchError``."""
    data, notes, _ = _run_ranks("straggler", options.to_dict(), options.num_ranks, launch,
                             "bench straggler")
    result = StragglerResult.from_dict(data)
    return replace(result, notes=(*result.notes, *notes), network=network_of(launch, options.num_ranks))


def ranks_on_this_machine(num_ranks: int, launch: RunOptions) -> int:
    """How many of a ``num_ranks`` job's ranks ``launch`` places on this machine (every rank of an
    emulated cluster; the ranks of hosts reached without ssh otherwise). Plans, starts nothing."""
    from asyncddp.launcher.hosts import launches_over_ssh

    with stop_signals.private_dir("asyncddp-bench-") as workdir:
        planned = _plan("comm", (), num_ranks, launch, workdir)
    if planned.emulated is not None:
        return len(planned.plan.rank_hosts)
    remote = {host.name for host in planned.plan.hosts if launches_over_ssh(host)}
    return sum(host not in remote for host in planned.plan.rank_hosts)


def fault_launch(options: FaultBenchOptions, launch: RunOptions) -> RunOptions:
    """``launch`` made fault tolerant, after the checks that need the plan: the MPI can keep a job
    alive without a rank (else the launcher's one-line refusal), and ``--min-ranks`` or the
    config's ``min_ranks`` leaves room for the loss. Nothing is started."""
    from asyncddp.bench.fault import check_kill
    from asyncddp.launcher.mpi import check_fault_tolerance

    launch = replace(launch, fault_tolerant=True)
    with stop_signals.private_dir("asyncddp-bench-") as workdir:
        planned = _plan("fault", (), options.num_ranks, launch, workdir)
    where = "--min-ranks" if launch.min_ranks is not None else f"{launch.config}: min_ranks"
    check_kill(options.num_ranks, options.kill_rank, options.kill_at_step, options.warmup, options.iters,
               planned.config.min_ranks, where)
    check_fault_tolerance(planned.plan.argv[0])
    return launch


def run_fault_bench(base: FaultBenchOptions, methods: tuple[str, ...], left_out: tuple[str, ...] = (),
                    launch: RunOptions = RunOptions(),
                    on_progress: Callable[[dict], None] | None = None) -> FaultBenchResult:
    """One fault-tolerant launch of workload ``fault`` per method, each losing rank
    ``base.kill_rank`` at step ``base.kill_at_step``; a failed launch is a row with its error.
    ``left_out``: the methods not run, each with why (from ``choose_fault_methods``)."""
    from asyncddp.bench.fault import CANNOT_SURVIVE, GUARANTEES, FaultBenchResult, FaultRun

    launch = fault_launch(base, launch)
    runs, params, host = [], 0, ""
    for done, method in enumerate(methods):
        event = {"done": done, "total": len(methods), "method": method, "num_ranks": base.num_ranks}
        if on_progress:
            on_progress({**event, "starting": True})
        options = replace(base, method=method)
        try:
            data, notes, job = _run_ranks("fault", options.to_dict(), base.num_ranks, launch,
                                          f"bench {base.model} {method} -np {base.num_ranks} --kill-rank "
                                          f"{base.kill_rank}")
            figures = data["run"]
            runs.append(FaultRun(method=method, num_ranks=base.num_ranks, exit_code=job.exit_code,
                                 lost_ranks=tuple(lost.rank for lost in job.lost),
                                 lost=tuple(lost.describe() for lost in job.lost),
                                 **{**figures, "stall_s_per_rank": tuple(figures["stall_s_per_rank"]),
                                    "notes": (*figures["notes"], *notes)}))
            params, host = data["num_parameters"], data["host"]
        except BenchError as error:
            runs.append(FaultRun(method=method, num_ranks=base.num_ranks, guarantee=GUARANTEES[method][0],
                                 exit_code=getattr(error, "job_exit_code", None), error=str(error)))
        if on_progress:
            on_progress({**event, "done": done + 1, "starting": False})
    return FaultBenchResult(model=base.model, device=base.device, num_ranks=base.num_ranks,
                            kill_rank=base.kill_rank, kill_at_step=base.kill_at_step, batch_size=base.batch_size,
                            image_size=base.image_size, warmup=base.warmup, iters=base.iters,
                            num_parameters=params, runs=tuple(runs),
                            left_out=tuple(f"{method}: {CANNOT_SURVIVE[method]}" for method in left_out),
                            host=host, network=network_of(launch, base.num_ranks))
