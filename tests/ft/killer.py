"""Test harness for fault-tolerant jobs: a real mpirun with ULFM, a real SIGKILL by PID.

``run_and_kill`` starts ``script`` on ``num_ranks`` ranks with ``--with-ft ulfm`` and
``ASYNCDDP_FAULT_TOLERANT=1``. Each rank writes ``pid.<rank>``; at the k-th kill point of the
script every live rank writes ``ready.<k>.<rank>`` and waits for the file ``go.<k>``. The harness
then kills that point's victims with ``os.kill(pid, SIGKILL)`` and writes ``go.<k>``, so each loss
lands at the step the script chose; ``kill_on_file`` kills a rank where the script signals it.
Each survivor writes ``result.<launch rank>.json``; the harness returns those. Ranks are always
named by their launch rank here. ``run_cli_and_kill`` does the same through ``asyncddp run
--fault-tolerant``.
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


def run_and_kill(script: str, num_ranks: int, kills: list[list[int]], workdir: Path, *args: str,
                 timeout: float = 90, env: dict | None = None,
                 kill_on_file: tuple[str, int] | None = None) -> dict[int, dict]:
    """``kill_on_file``: (file name, launch rank): after the kill points, kill that rank once it
    has written that file (the script decides where, e.g. in the middle of a recovery)."""
    argv = [find_mpirun(), "--with-ft", "ulfm", "--oversubscribe", "-np", str(num_ranks),
            "-x", "ASYNCDDP_FAULT_TOLERANT=1", sys.executable, str(ROOT / "tests" / "ft" / script),
            str(workdir), *args]
    log = open(workdir / "mpirun.log", "w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=mpi_env({"ASYNCDDP_FAULT_TOLERANT": "1", **(env or {})}),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        alive = _kill_and_wait(proc, num_ranks, kills, workdir, time.monotonic() + timeout, kill_on_file)
    finally:
        # Survivors are done; how mpirun ends after losing ranks is the launcher's concern, not
        # the library's: give it a moment, then end it.
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return {r: json.loads((workdir / f"result.{r}.json").read_text()) for r in alive}


def run_cli_and_kill(script: str, num_ranks: int, kills: list[list[int]], workdir: Path, *args: str,
                     timeout: float = 90) -> tuple[dict[int, dict], int, str]:
    """``run_and_kill`` through ``asyncddp run --fault-tolerant`` (its plan, rank guards and
    summary): the survivors' results, the launcher's exit code and its stderr."""
    argv = [sys.executable, "-m", "asyncddp", "run", "--fault-tolerant", "-np", str(num_ranks),
            str(ROOT / "tests" / "ft" / script), str(workdir), *args]
    with open(workdir / "mpirun.log", "w") as log, open(workdir / "launcher.err", "w") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            alive = _kill_and_wait(proc, num_ranks, kills, workdir, deadline, None)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:  # SIGTERM: the launcher stops mpirun and every rank
                proc.terminate()
                proc.wait(timeout=30)
    results = {r: json.loads((workdir / f"result.{r}.json").read_text()) for r in alive}
    return results, proc.returncode, (workdir / "launcher.err").read_text()


def _kill_and_wait(proc, num_ranks: int, kills: list[list[int]], workdir: Path, deadline: float,
                   kill_on_file: tuple[str, int] | None) -> list[int]:
    """Kill each point's victims when every live rank reached it; the ranks alive at the end,
    once each has written its result."""
    alive = list(range(num_ranks))
    for point, victims in enumerate(kills):
        _wait_for(workdir, [f"ready.{point}.{r}" for r in alive], proc, deadline)
        for r in victims:
            os.kill(int((workdir / f"pid.{r}").read_text()), signal.SIGKILL)
        (workdir / f"go.{point}").write_text(str(time.time()))
        alive = [r for r in alive if r not in victims]
    if kill_on_file is not None:
        name, victim = kill_on_file
        _wait_for(workdir, [name], proc, deadline)
        os.kill(int((workdir / f"pid.{victim}").read_text()), signal.SIGKILL)
        alive.remove(victim)
    _wait_for(workdir, [f"result.{r}.json" for r in alive], proc, deadline)
    return alive


def _wait_for(workdir: Path, names: list[str], proc, deadline: float) -> None:
    while not all((workdir / n).exists() for n in names):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {names}:\n{_log(workdir)}")
        if proc.poll() is not None and not all((workdir / n).exists() for n in names):
            raise AssertionError(f"mpirun exited ({proc.returncode}) before {names}:\n{_log(workdir)}")
        time.sleep(0.02)


def _log(workdir: Path) -> str:
    logs = [workdir / "mpirun.log", workdir / "launcher.err"]
    return "\n".join(path.read_text()[-6000:] for path in logs if path.exists())


# -- rank side ---------------------------------------------------------------------------------
def announce(workdir: Path, launch_rank: int) -> None:
    (workdir / f"pid.{launch_rank}").write_text(str(os.getpid()))


def wait_for_go(workdir: Path, launch_rank: int, point: int = 0) -> float:
    """Say this rank reached kill point ``point``; return when its victims are dead (the time
    the harness wrote ``go.<point>``)."""
    (workdir / f"ready.{point}.{launch_rank}").write_text("1")
    go = workdir / f"go.{point}"
    while True:
        text = go.read_text() if go.exists() else ""
        if text:
            return float(text)
        time.sleep(0.005)


def report(workdir: Path, launch_rank: int, result: dict) -> None:
    tmp = workdir / f"result.{launch_rank}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.rename(workdir / f"result.{launch_rank}.json")
