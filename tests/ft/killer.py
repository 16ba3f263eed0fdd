"""Test harness for fault-tolerant jobs: a real mpirun with ULFM, a real SIGKILL by PID.

``run_and_kill`` starts ``script`` on ``num_ranks`` ranks with ``--with-ft ulfm`` and
``ASYNCDDP_FAULT_TOLERANT=1``. Each rank writes ``pid.<rank>``; at the k-th kill point of the
script every live rank writes ``ready.<k>.<rank>`` and waits for the file ``go.<k>``. The harness
then kills that point's victims with ``os.kill(pid, SIGKILL)`` and writes ``go.<k>``, so each loss
lands at the step the script chose; ``kill_on_file`` kills a rank where the script signals it.
Each survivor writes ``result.<launch rank>.json``; the harness returns those. Ranks are always
named by their launch rank here. ``run_cli_and_kill`` does the same through ``asyncddp run
--fault-tolerant``.

Waits are bounded by progress, not by wall time: on a loaded machine, starting Python and torch
on every rank can take minutes, and that is no failure. A wait fails only after ``stall`` seconds
in which nothing progressed: no new file in the work folder and, until every rank has announced
itself, no CPU time used by the job's processes (before ``init()`` returns they import and start;
after it, a rank spinning in a hung MPI call would use CPU forever, so only files count).
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
                 stall: float = 60, env: dict | None = None,
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
        alive = _kill_and_wait(proc, num_ranks, kills, workdir, _Progress(proc, workdir, num_ranks, stall),
                               kill_on_file)
    finally:
        # Survivors are done; how mpirun ends after losing ranks is the launcher's concern, not
        # the library's: give it a moment, then end it.
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_ranks(workdir, script)
        log.close()
    return {r: json.loads((workdir / f"result.{r}.json").read_text()) for r in alive}


def run_cli_and_kill(script: str, num_ranks: int, kills: list[list[int]], workdir: Path, *args: str,
                     stall: float = 60) -> tuple[dict[int, dict], int, str]:
    """``run_and_kill`` through ``asyncddp run --fault-tolerant`` (its plan, rank guards and
    summary): the survivors' results, the launcher's exit code and its stderr."""
    argv = [sys.executable, "-m", "asyncddp", "run", "--fault-tolerant", "-np", str(num_ranks),
            str(ROOT / "tests" / "ft" / script), str(workdir), *args]
    with open(workdir / "mpirun.log", "w") as log, open(workdir / "launcher.err", "w") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=err, stdin=subprocess.DEVNULL)
        progress = _Progress(proc, workdir, num_ranks, stall)
        try:
            alive = _kill_and_wait(proc, num_ranks, kills, workdir, progress, None)
            # The survivors have reported: what is left is the launcher's summary.
            while proc.poll() is None and progress.waiting_for("the launcher to end"):
                time.sleep(0.05)
        finally:
            if proc.poll() is None:  # SIGTERM: the launcher stops mpirun and every rank
                proc.terminate()
                proc.wait(timeout=30)
    results = {r: json.loads((workdir / f"result.{r}.json").read_text()) for r in alive}
    return results, proc.returncode, (workdir / "launcher.err").read_text()


def _kill_ranks(workdir: Path, script: str) -> None:
    """Ranks still running ``script`` once mpirun is gone (a failed wait: Open MPI 5 puts each
    rank in its own process group, which killing mpirun's does not reach)."""
    for path in workdir.glob("pid.*"):
        try:
            pid = int(path.read_text())
            if f"tests/ft/{script}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            continue


class _Progress:
    """Tells whether a job is still getting somewhere (see the module's docstring)."""

    def __init__(self, proc, workdir: Path, num_ranks: int, stall: float) -> None:
        self.proc, self.workdir, self.num_ranks, self.stall = proc, workdir, num_ranks, stall
        self.files: set[str] = set()
        self.cpu = -1.0
        self.last = time.monotonic()
        self.checked = 0.0

    def _moved(self) -> bool:
        files = {p.name for p in self.workdir.iterdir()}
        moved = not files <= self.files
        self.files |= files
        if sum(name.startswith("pid.") for name in files) < self.num_ranks:
            cpu = _tree_cpu_seconds(self.proc.pid)
            moved = moved or cpu > self.cpu + 0.05
            self.cpu = max(self.cpu, cpu)
        return moved

    def waiting_for(self, what) -> bool:
        """True to keep waiting; AssertionError once nothing moved for ``stall`` seconds."""
        now = time.monotonic()
        if now - self.checked >= 0.5:  # reading /proc for the whole tree is not free
            self.checked = now
            if self._moved():
                self.last = now
        if now - self.last > self.stall:
            raise AssertionError(f"no progress for {self.stall:g} s waiting for {what}:\n{_log(self.workdir)}")
        return True


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by the live processes of ``root``'s tree (mpirun and its ranks)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def _kill_and_wait(proc, num_ranks: int, kills: list[list[int]], workdir: Path, progress: _Progress,
                   kill_on_file: tuple[str, int] | None) -> list[int]:
    """Kill each point's victims when every live rank reached it; the ranks alive at the end,
    once each has written its result."""
    alive = list(range(num_ranks))
    for point, victims in enumerate(kills):
        _wait_for(workdir, [f"ready.{point}.{r}" for r in alive], proc, progress)
        for r in victims:
            os.kill(int((workdir / f"pid.{r}").read_text()), signal.SIGKILL)
        (workdir / f"go.{point}").write_text(str(time.time()))
        alive = [r for r in alive if r not in victims]
    if kill_on_file is not None:
        name, victim = kill_on_file
        _wait_for(workdir, [name], proc, progress)
        os.kill(int((workdir / f"pid.{victim}").read_text()), signal.SIGKILL)
        alive.remove(victim)
    _wait_for(workdir, [f"result.{r}.json" for r in alive], proc, progress)
    return alive


def _wait_for(workdir: Path, names: list[str], proc, progress: _Progress) -> None:
    while not all((workdir / n).exists() for n in names):
        if proc.poll() is not None and not all((workdir / n).exists() for n in names):
            raise AssertionError(f"mpirun exited ({proc.returncode}) before {names}:\n{_log(workdir)}")
        progress.waiting_for(names)
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
