"""Test harness for fault-tolerant jobs: a real mpirun with ULFM, a real SIGKILL by PID.

``run_and_kill`` starts ``script`` on ``num_ranks`` ranks with ``--with-ft ulfm`` and
``ASYNCDDP_FAULT_TOLERANT=1``. Each rank writes ``pid.<rank>``; at the kill step every rank
writes ``ready.<rank>`` and waits for the file ``go``. The harness then kills the victims with
``os.kill(pid, SIGKILL)`` and writes ``go``, so the loss always lands at the same step. Each
survivor writes ``result.<launch rank>.json``; the harness returns those.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mpi_helpers import ROOT, find_mpirun, mpi_env


def run_and_kill(script: str, num_ranks: int, victims: list[int], workdir: Path, *args: str,
                 timeout: float = 90, env: dict | None = None) -> dict[int, dict]:
    argv = [find_mpirun(), "--with-ft", "ulfm", "--oversubscribe", "-np", str(num_ranks),
            "-x", "ASYNCDDP_FAULT_TOLERANT=1", sys.executable, str(ROOT / "tests" / "ft" / script),
            str(workdir), *args]
    log = open(workdir / "mpirun.log", "w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=mpi_env({"ASYNCDDP_FAULT_TOLERANT": "1", **(env or {})}),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    survivors = [r for r in range(num_ranks) if r not in victims]
    deadline = time.monotonic() + timeout
    try:
        _wait_for(workdir, [f"ready.{r}" for r in range(num_ranks)], proc, deadline)
        for r in victims:
            os.kill(int((workdir / f"pid.{r}").read_text()), signal.SIGKILL)
        (workdir / "go").write_text(str(time.time()))
        _wait_for(workdir, [f"result.{r}.json" for r in survivors], proc, deadline)
    finally:
        # Survivors are done; mpirun may still be reaping the dead (its exit is the launcher's
        # concern, not the library's): give it a moment, then end it.
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return {r: json.loads((workdir / f"result.{r}.json").read_text()) for r in survivors}


def _wait_for(workdir: Path, names: list[str], proc, deadline: float) -> None:
    while not all((workdir / n).exists() for n in names):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {names}:\n{_log(workdir)}")
        if proc.poll() is not None and not all((workdir / n).exists() for n in names):
            raise AssertionError(f"mpirun exited ({proc.returncode}) before {names}:\n{_log(workdir)}")
        time.sleep(0.02)


def _log(workdir: Path) -> str:
    return (workdir / "mpirun.log").read_text()[-6000:]


# -- rank side ---------------------------------------------------------------------------------
def announce(workdir: Path, launch_rank: int) -> None:
    (workdir / f"pid.{launch_rank}").write_text(str(os.getpid()))


def wait_for_go(workdir: Path, launch_rank: int) -> float:
    """Say this rank reached the kill step; return when the victims are dead (time of ``go``)."""
    (workdir / f"ready.{launch_rank}").write_text("1")
    while not (workdir / "go").exists():
        time.sleep(0.005)
    time.sleep(0.01)  # let the write of go finish
    return float((workdir / "go").read_text())


def report(workdir: Path, launch_rank: int, result: dict) -> None:
    tmp = workdir / f"result.{launch_rank}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.rename(workdir / f"result.{launch_rank}.json")
