"""``asyncddp ipy``: a real ipyparallel cluster of MPI engines, driven headlessly through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ipyparallel  # in the test extra: a missing install fails here, it is not skipped
import pytest

from asyncddp.launcher import interactive
from asyncddp.errors import ConfigError
from tests.mpi_helpers import ROOT

NOTEBOOK = ROOT / "examples" / "interactive_consensus.ipynb"

CONSENSUS = """
import torch, asyncddp as addp
addp.init()
x = torch.tensor([float(addp.rank()), 10.0 * addp.rank()], dtype=torch.float64)
for _ in range(3):
    x = addp.neighbor_allreduce(x)
result = (addp.rank(), addp.size(), x.tolist())
"""


def ipy(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "asyncddp", "ipy", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=150, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.timeout(240)
def test_start_run_consensus_stop_leaves_nothing(tmp_path):
    env = {**os.environ, "IPYTHONDIR": str(tmp_path)}
    started = json.loads(ipy("start", "-np", "3", "--json", env=env).stdout)
    directory = tmp_path / "profile_asyncddp"
    try:
        assert started["running"] and started["num_engines"] == 3
        assert started["profile_dir"] == str(directory)
        again = ipy("start", "-np", "3", env=env, check=False)
        assert again.returncode == 2 and again.stderr.count("\n") == 1
        assert "already running" in again.stderr and "asyncddp ipy stop" in again.stderr
        status = json.loads(ipy("status", "--json", env=env).stdout)
        assert status["running"] and status["num_engines"] == 3

        client = ipyparallel.Client(profile_dir=str(directory), timeout=30)
        try:
            view = client[:]
            view.execute(CONSENSUS, block=True)
            results = sorted(view.pull("result", block=True))
            # The example notebook's %%px cells, in order, on the same engines.
            cells = json.loads(NOTEBOOK.read_text())["cells"]
            px = ["".join(c["source"]).split("\n", 1)[1] for c in cells
                  if c["cell_type"] == "code" and "".join(c["source"]).startswith("%%px\n")]
            assert len(px) == 3
            for source in px:
                view.execute(source, block=True).get()
            view.execute("distance = float(torch.norm(x - mean))", block=True).get()
            distances = view.pull("distance", block=True)
        finally:
            client.close()
        assert len(distances) == 3 and max(distances) < 1e-12
        # Exponential graph of 3 ranks: every rank averages all three, so one step already gives
        # the exact mean (0+1+2)/3 = 1 (and 10), and further steps keep it.
        assert results == [(r, 3, [1.0, 10.0]) for r in range(3)]
    finally:
        stopped = ipy("stop", env=env, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    for pid in (started["controller_pid"], started["runner_pid"]):
        assert not interactive._alive(pid)
    assert interactive._processes_naming(directory) == []
    assert "not running" in ipy("status", env=env).stdout
    second = ipy("stop", env=env, check=False)
    assert second.returncode == 2 and "no interactive cluster" in second.stderr


def test_bad_hostfile_fails_before_anything_starts(tmp_path):
    env = {**os.environ, "IPYTHONDIR": str(tmp_path)}
    done = ipy("start", "-np", "2", "--hostfile", str(tmp_path / "missing"), env=env, check=False)
    assert done.returncode == 2 and done.stderr.startswith("asyncddp: error:") and done.stderr.count("\n") == 1
    assert "missing" in done.stderr
    assert not (tmp_path / "profile_asyncddp" / interactive.STATE_FILE).exists()


def test_missing_ipyparallel_is_one_clear_error(monkeypatch):
    real = interactive.importlib.util.find_spec
    monkeypatch.setattr(interactive.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ipyparallel" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'asyncddp\[interactive\]'"):
        interactive.start(2)


def test_profile_dir_follows_ipythondir(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    assert interactive.profile_dir("bf") == tmp_path / "profile_bf"
    with pytest.raises(ConfigError, match="--profile"):
        interactive.profile_dir("a/b")


def test_engines_are_launched_with_the_users_launch_flags(tmp_path):
    from asyncddp.launcher.run_config import RunOptions

    launch = RunOptions(host_list="localhost:2", config="c.yaml", env=("A=1", "B"), mpi_args="--mca btl self",
                        oversubscribe=True)
    assert interactive._engine_argv(3, tmp_path, launch) == [
        sys.executable, "-m", "asyncddp", "run", "-np", "3", "-H", "localhost:2", "--config", "c.yaml",
        "--mpi-args", "--mca btl self", "-x", "A=1", "-x", "B", "--oversubscribe",
        "-m", "ipyparallel.engine", f"--profile-dir={tmp_path}", "--log-level=WARN"]
    # ibfrun's (and ipy start's) network flags reach the engines' job too.
    bluefog = RunOptions(network="eth1", ssh_port=2222, use_infiniband=True)
    assert interactive._engine_argv(2, tmp_path, bluefog)[6:12] == [
        "--network-interface", "eth1", "-p", "2222", "--use-infiniband", "-m"]


def _record(directory, controller, runner, identities):
    """A state file as start() writes it, naming ``controller`` and ``runner``."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {"controller_pid": controller, "runner_pid": runner, "num_ranks": 2, "log": None,
             "controller_pid_identity": identities[0], "runner_pid_identity": identities[1]}
    (directory / interactive.STATE_FILE).write_text(json.dumps(state))


def test_stop_and_status_never_signal_a_process_that_now_holds_a_recorded_pid(tmp_path):
    env = {**os.environ, "IPYTHONDIR": str(tmp_path)}
    directory = tmp_path / "profile_asyncddp"
    strangers = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2)]
    try:
        pids = [p.pid for p in strangers]
        exact = [interactive._identity(pid) for pid in pids]
        # Their real identities (only the profile directory is missing from their command lines),
        # an older process's (same PID, earlier start), and none at all (a record from before
        # identities were kept).
        for identities in (exact, [{**i, "start_time": i["start_time"] - 1} for i in exact], [None, None]):
            _record(directory, *pids, identities)
            status = json.loads(ipy("status", "--json", env=env).stdout)
            assert not status["running"] and status["stale"] and sorted(status["stale_pids"]) == sorted(pids)
            assert not (directory / interactive.STATE_FILE).exists()  # removed: it names nothing of ours
            _record(directory, *pids, identities)
            assert "record was stale" in ipy("status", env=env).stdout
            _record(directory, *pids, identities)
            stopped = ipy("stop", env=env)
            assert "nothing of profile asyncddp was running: its record was stale" in stopped.stdout
            assert not (directory / interactive.STATE_FILE).exists()
            assert [p.poll() for p in strangers] == [None, None]  # never signalled
    finally:
        for p in strangers:
            p.kill()
            p.wait()


def test_a_dead_pid_is_stale_and_a_live_cluster_process_is_still_stopped(tmp_path):
    env = {**os.environ, "IPYTHONDIR": str(tmp_path)}
    directory = tmp_path / "profile_asyncddp"
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A stand-in for the controller: a session leader naming the profile directory, as start() makes.
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                                   f"--profile-dir={directory}"], start_new_session=True)
    try:
        # Popen returns once the child closed its close-on-exec pipe, which is a moment before
        # the kernel shows the new command line.
        while f"--profile-dir={directory}".encode() not in Path(f"/proc/{controller.pid}/cmdline").read_bytes():
            time.sleep(0.01)
        _record(directory, controller.pid, dead.pid, [interactive._identity(controller.pid), None])
        status = interactive.status(ipython_dir=str(tmp_path), count_engines=False)
        assert not status.running and status.stale_pids == (dead.pid,) and not status.all_stale
        assert (directory / interactive.STATE_FILE).exists()  # the controller still needs stopping
        assert "ended or now belong to other processes; asyncddp ipy stop" in ipy("status", env=env).stdout
        stopped = ipy("stop", "--json", env=env)
        assert json.loads(stopped.stdout)["stale_pids"] == [dead.pid]
        assert controller.wait(timeout=30) == -15  # SIGTERM, verified first
        assert not (directory / interactive.STATE_FILE).exists()
        _record(directory, dead.pid, dead.pid, [None, None])
        assert json.loads(ipy("status", "--json", env=env).stdout)["stale"]
    finally:
        controller.kill()
        controller.wait()
