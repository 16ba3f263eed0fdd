"""Run a ``LaunchPlan``: the one module of asyncddp that starts a job.

mpirun runs without a shell in its own process group. Its tagged output (``[1,2]<stdout>:`` from
Open MPI, ``[2]<asyncddp>`` from MPICH; Open MPI 4 and MPICH tag each chunk a rank writes, which
is joined back into that rank's lines) becomes ``[2] line`` on the console and, with an output directory,
``rank.2.log``; mpirun's own messages become ``[mpirun] ...`` and ``mpirun.log``. The job ends with
the first failing rank's exit code and a one-line summary naming rank, host and code; a timeout
kills it with 124. SIGINT, SIGTERM and SIGHUP (``asyncddp.launcher.stop_signals``) stop every rank
and end it with 128+signal: 130 for Ctrl-C, 143 for ``kill``, 129 for a closed terminal. A
fault-tolerant plan's job goes on when ranks are lost, and its summary and code come from
``asyncddp.launcher.survival``.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO

from asyncddp.errors import ConfigError, LaunchError
from asyncddp.launcher import session_guard, stop_signals
from asyncddp.launcher.mpi import MpiFlavor, find_failure, split_tagged_line
from asyncddp.launcher.plan import LaunchPlan
from asyncddp.launcher.survival import LostRank, RankEnds, survival_result

__all__ = ["JobResult", "run_plan"]

TIMEOUT_EXIT = 124
# After mpirun reports a dead rank it normally ends the job itself; past this we kill it.
FAILURE_GRACE_S = 3.0
# On timeout: SIGUSR1 first (ranks that called asyncddp.init() print their Python stacks), then kill.
STACKS_GRACE_S = 1.5
# Linux's limit on one argument or one NAME=value string handed to exec (32 pages).
MAX_ARG_STRLEN = 32 * 4096


@dataclass(frozen=True)
class JobResult:
    exit_code: int
    reason: str  # "ok", "failed", "timeout", "interrupted" (by a stop signal, exit_code 128+signal)
    failed_rank: int | None = None
    failed_host: str | None = None
    duration_s: float = 0.0
    summary: str = ""
    lost: tuple[LostRank, ...] = ()  # fault-tolerant jobs: the ranks lost on the way

    def to_dict(self) -> dict:
        return asdict(self)


class _Output:
    """Routes mpirun's lines to the console and per-rank log files; watches for failures."""

    ends: RankEnds | None = None  # a fault-tolerant job's rank guard reports

    def __init__(self, flavor: MpiFlavor, output_dir: str | None, out: IO[str], err: IO[str]) -> None:
        self.flavor = flavor
        self.dir = Path(output_dir) if output_dir else None
        self.out, self.err = out, err
        self.lock = threading.Lock()
        self.files: dict[str, IO[str]] = {}
        self.diagnostics: list[str] = []  # all text that may name a failing rank
        self.failure_seen_at: float | None = None
        self.stack_lines = 0  # faulthandler's "Thread 0x... (most recent call first):" headers seen
        self.pending: dict[tuple[str, int | None, str], str] = {}
        # Set when the console cannot be written (a reader such as `| head` went away): the job
        # is stopped as mpirun's would be by SIGPIPE, instead of the pumps dying and the ranks
        # blocking on a full pipe.
        self.console_closed = threading.Event()
        if self.dir is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(f"cannot write logs to {self.dir}: {error.strerror}; give a directory you can "
                                  "write to") from None

    def _file(self, name: str) -> IO[str] | None:
        if self.dir is None:
            return None
        if name not in self.files:
            self.files[name] = open(self.dir / name, "w", buffering=1)
        return self.files[name]

    def line(self, raw: str, pipe: str = "stdout") -> None:
        """One line of mpirun's ``pipe``: its pieces that end a rank's line are shown, the others
        wait in ``pending`` for the rest of that rank's line."""
        pieces = split_tagged_line(raw, self.flavor)
        with self.lock:
            for index, (rank, stream, text) in enumerate(pieces):
                stream = stream or pipe
                key = (pipe, rank, stream)
                if rank is not None and index < len(pieces) - 1:
                    self.pending[key] = self.pending.get(key, "") + text
                else:
                    self._show(rank, stream, self.pending.pop(key, "") + text)

    def _show(self, rank: int | None, stream: str, text: str) -> None:
        """Write one whole line of a rank (or of mpirun) to the console, its log and the watch; lock held."""
        if rank is not None and self.ends is not None and (shown := self.ends.note(rank, text)) is not None:
            if not shown:
                return
            text = shown
        console = self.out if stream == "stdout" and rank is not None else self.err
        self._write_console(console, f"[{'mpirun' if rank is None else rank}] {text}\n")
        log = self._file("mpirun.log" if rank is None else f"rank.{rank}.log")
        if log is not None:
            log.write(text + "\n")
        if rank is not None and text.endswith("(most recent call first):"):
            self.stack_lines += 1
        if rank is None or stream != "stdout":
            self.diagnostics.append(text)
            if len(self.diagnostics) > 2000:  # mpirun's verdict comes last; keep memory bounded
                del self.diagnostics[:1000]
            if self.failure_seen_at is None and find_failure("\n".join(self.diagnostics[-8:]), self.flavor):
                self.failure_seen_at = time.monotonic()

    def _write_console(self, console: IO[str], text: str) -> None:
        if self.console_closed.is_set():
            return
        try:
            console.write(text)
            console.flush()
        except OSError:
            self.console_closed.set()

    def close(self) -> None:
        with self.lock:
            for (_, rank, stream), text in self.pending.items():  # a last line without its newline
                self._show(rank, stream, text)
            self.pending.clear()
        for handle in self.files.values():
            handle.close()


def _pump(pipe: IO[bytes], name: str, output: _Output) -> None:
    for raw in iter(pipe.readline, b""):
        output.line(raw.decode("utf-8", "replace").rstrip("\r\n"), name)
    pipe.close()


def _stop(process: subprocess.Popen) -> None:
    """End mpirun and its ranks (``session_guard.end_session``), then reap mpirun."""
    session_guard.end_session(process.pid)
    process.wait()


def _ask_for_stacks(process: subprocess.Popen, output: _Output) -> bool:
    """SIGUSR1 to mpirun, which forwards it to every rank; True if a stack came back in time."""
    before = output.stack_lines
    try:
        process.send_signal(signal.SIGUSR1)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + STACKS_GRACE_S
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    return output.stack_lines > before


def _write_files(plan: LaunchPlan) -> None:
    for path, text in plan.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700 if path.endswith(".sh") else 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
    for path, target in plan.links.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        Path(path).unlink(missing_ok=True)
        os.symlink(target, path)


def start_failure(error: OSError, plan: LaunchPlan, environment: dict[str, str]) -> str:
    """Why mpirun could not be started, in one line that names the real cause: the working
    directory, an argument list or environment too large for ``exec``, or mpirun itself."""
    program = plan.argv[0]
    if error.errno == errno.E2BIG:
        items = [(len(value.encode(errors="surrogateescape")), f"the variable {name}") for name, value in
                 environment.items()] + [(len(arg.encode(errors="surrogateescape")), "an argument") for arg in plan.argv]
        size, what = max(items)
        return (f"cannot start {program}: its arguments and environment are too large to pass to a program "
                f"(Argument list too long); the largest is {what} ({size} bytes; Linux takes at most "
                f"{MAX_ARG_STRLEN >> 10} KiB for one): pass large values in a file instead")
    if plan.cwd is not None and error.filename == plan.cwd:
        return (f"cannot start {program} in the working directory {plan.cwd}: {error.strerror}; "
                "create it or fix working_dir")
    return f"cannot start {program} ({error}); check the mpirun installation (ASYNCDDP_MPIRUN, PATH)"


def _summary(plan: LaunchPlan, output: _Output, returncode: int) -> JobResult:
    failure = find_failure("\n".join(output.diagnostics), plan.flavor)
    if output.ends is not None and output.ends.ends and failure is None:
        code, summary, lost, first = survival_result(output.ends, plan.rank_hosts, plan.min_ranks)
        if lost or returncode == 0:  # else mpirun failed on its own: its own messages say why
            return JobResult(code, "ok" if code == 0 else "failed", first and first.rank, first and first.host,
                             summary=summary, lost=tuple(lost))
    if returncode == 0 and failure is None:
        return JobResult(0, "ok")
    rank, code = failure if failure else (None, None)
    code = code if code is not None else returncode or 1
    host = plan.rank_hosts[rank] if rank is not None and rank < len(plan.rank_hosts) else None
    daemon = re.search(r"Remote host:\s+(\S+)", "\n".join(output.diagnostics))
    if rank is None and daemon:
        summary = (f"asyncddp: job failed: mpirun could not start its daemon on {daemon.group(1)} (exit {code}): "
                   "check ssh and the remote PATH with asyncddp doctor")
    elif rank is None:
        summary = (f"asyncddp: job failed: mpirun exited with code {code} without naming a failing rank; "
                   "see its [mpirun] lines above")
    else:
        summary = f"asyncddp: job failed: rank {rank} on {host} exited with code {code}"
    return JobResult(code, "failed", rank, host, summary=summary)


def run_plan(plan: LaunchPlan, *, output_dir: str | None = None, timeout: float | None = None,
             out: IO[str] | None = None, err: IO[str] | None = None) -> JobResult:
    """Run ``plan`` to the end and say how it ended; never raises for a failing job.

    SIGINT, SIGTERM and SIGHUP stop every rank and end the job with reason "interrupted" and exit
    code 128+signal: the watch loop polls for them (``stop_signals.deferred``), so no exception
    can land between starting mpirun and watching it, or inside Popen's bookkeeping.
    """
    out, err = out or sys.stdout, err or sys.stderr
    started = time.monotonic()
    with stop_signals.deferred() as stop:
        _write_files(plan)
        output = _Output(plan.flavor, output_dir, out, err)
        if plan.fault_tolerant:
            output.ends = RankEnds(len(plan.rank_hosts), started)
        environment = {**os.environ, **plan.env}
        try:
            process = subprocess.Popen(list(plan.argv), env=environment, cwd=plan.cwd,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True)
        except OSError as error:
            output.close()
            raise LaunchError(start_failure(error, plan, environment)) from None
        guard = session_guard.start(process.pid)
        pumps = [threading.Thread(target=_pump, args=(pipe, name, output), daemon=True)
                 for pipe, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))]
        for pump in pumps:
            pump.start()
        try:
            result = _watch(process, output, timeout, started, stop)
            if result is None and process.returncode != 0:
                _stop(process)  # a killed mpirun leaves its ranks running in our session
        except BaseException:  # whatever went wrong here, mpirun must not outlive us
            _stop(process)
            raise
        finally:
            session_guard.stop(guard)
        for pump in pumps:
            pump.join(5)
        output.close()
    result = result or _summary(plan, output, process.returncode)
    return replace(result, duration_s=round(time.monotonic() - started, 3))


def _watch(process: subprocess.Popen, output: _Output, timeout: float | None, started: float,
           stop: stop_signals.Deferral) -> JobResult | None:
    """Wait for mpirun; stop it on timeout, on a reported rank failure, on a stop signal or when
    the console went away."""
    while process.poll() is None:
        if stop.wait(0.1):
            signum = stop.take()
            _stop(process)
            return JobResult(128 + signum, "interrupted",
                             summary=f"asyncddp: {stop_signals.describe(signum)}; all ranks were stopped")
        if output.console_closed.is_set():
            _stop(process)
            return JobResult(128 + signal.SIGPIPE, "interrupted",
                             summary="asyncddp: the output's reader went away (broken pipe); all ranks were stopped")
        now = time.monotonic()
        if timeout is not None and now - started > timeout:
            stacks = _ask_for_stacks(process, output)
            _stop(process)
            where = " (the ranks' Python stacks at that moment are above)" if stacks else ""
            return JobResult(TIMEOUT_EXIT, "timeout",
                             summary=f"asyncddp: job timed out after {timeout:g} s (--timeout){where}; "
                                     "all ranks were killed")
        if output.failure_seen_at is not None and now - output.failure_seen_at > FAILURE_GRACE_S:
            _stop(process)
        if output.ends is not None and (hung := output.ends.lingering(now)):
            output.ends.stopped = hung
            _stop(process)
    return None
