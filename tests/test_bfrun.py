"""``bfrun`` and ``ibfrun``: BlueFog's command lines mapped onto ``asyncddp run`` / ``asyncddp ipy``,
and one BlueFog script run through the installed ``bfrun``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from asyncddp.cli.bfrun import bfrun_command, ibfrun_command
from tests.mpi_helpers import ROOT

ALIAS = ["-m", "asyncddp.compat.run_bluefog"]


def test_bfrun_strips_python_and_runs_the_script_under_the_alias(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("")
    assert bfrun_command(["-np", "4", "python", "train.py", "--lr", "0.1"]) == [
        "run", "-np", "4", *ALIAS, "train.py", "--lr", "0.1"]
    assert bfrun_command(["-np", "2", "/usr/bin/python3.11", "-m", "pkg.mod", "-x"]) == [
        "run", "-np", "2", *ALIAS, "-m", "pkg.mod", "-x"]
    assert bfrun_command(["-np", "2", "train.py"]) == ["run", "-np", "2", *ALIAS, "train.py"]
    assert bfrun_command(["-np", "2", "python", "-c", "print(1)"]) == ["run", "-np", "2", sys.executable, "-c", "print(1)"]
    assert bfrun_command(["-np", "2", "hostname"]) == ["run", "-np", "2", "hostname"]


def test_bfrun_maps_every_bluefog_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("")
    argv = ["-np", "8", "-H", "a:4,b:4", "-p", "2222", "--network-interface", "eth1", "--use-infiniband",
            "--extra-mpi-flags", "--mca btl_tcp_eager_limit 65536", "--timeline-filename", "tl.json",
            "--verbose", "python", "train.py", "--epochs", "3"]
    assert bfrun_command(argv) == [
        "run", "-np", "8", "-H", "a:4,b:4", "-p", "2222", "--network-interface", "eth1",
        "--mpi-args", "--mca btl_tcp_eager_limit 65536", "--use-infiniband", "-x", "BLUEFOG_LOG_LEVEL=debug",
        "--timeline-filename", "tl.json", *ALIAS, "train.py", "--epochs", "3"]
    assert bfrun_command(["-np", "2", "-hostfile", "h.txt", "python", "-m", "t"])[:5] == ["run", "-np", "2", "--hostfile", "h.txt"]
    assert bfrun_command(["-v"]) == ["--version"]


def test_bfrun_runs_installed_python_programs_under_the_alias(tmp_path):
    program = tmp_path / "tool"
    program.write_text("#!/usr/bin/env python3\nprint(1)\n")
    program.chmod(0o755)
    assert bfrun_command(["-np", "2", str(program), "a"]) == ["run", "-np", "2", *ALIAS, str(program), "a"]


def test_bfrun_prefix_picks_that_mpirun(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYNCDDP_MPIRUN", "")  # restored after the test: bfrun sets it for its run
    (tmp_path / "mpirun").write_text("#!/bin/sh\n")
    (tmp_path / "mpirun").chmod(0o755)
    bfrun_command(["--prefix", f"{tmp_path}/", "-np", "2", "python", "-m", "t"])
    assert os.environ["ASYNCDDP_MPIRUN"] == f"{tmp_path}/mpirun"
    with pytest.raises(SystemExit, match=r"^bfrun: error: --prefix /nowhere/: no mpirun at /nowhere/mpirun; "):
        bfrun_command(["--prefix", "/nowhere/", "-np", "2", "python", "-m", "t"])


@pytest.mark.parametrize("argv, message", [
    (["-np", "2", "python"], "bfrun: error: 'python' needs a script or -m module"),
    (["-np", "2"], "bfrun: error: no command to run"),
    (["-np", "2", "python", "missing.py"], "bfrun: error: script missing.py not found (looked in "),
])
def test_bfrun_without_a_command_is_one_line(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        bfrun_command(argv)


def test_ibfrun_start_and_stop_map_onto_asyncddp_ipy():
    assert ibfrun_command(["start", "-np", "4"]) == ["ipy", "start", "-np", "4", "--profile", "bluefog"]
    assert ibfrun_command(["start", "-np", "2", "--hostfile", "h.txt", "-p", "22", "--ipython-profile", "x",
                           "--enable-heartbeat"]) == [
        "ipy", "start", "-np", "2", "--hostfile", "h.txt", "-p", "22", "--profile", "x"]
    assert ibfrun_command(["stop"]) == ["ipy", "stop", "--profile", "bluefog"]
    assert ibfrun_command(["stop", "--ipython-profile", "x"]) == ["ipy", "stop", "--profile", "x"]


@pytest.mark.parametrize("argv", [[], ["start"], ["start", "-np", "x"], ["restart"]])
def test_ibfrun_bad_command_lines_are_one_line(argv):
    done = subprocess.run([sys.executable, "-c", "from asyncddp.cli.bfrun import ibfrun_main; ibfrun_main()", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("ibfrun") and done.stderr.count("\n") == 1, done.stderr


def test_bfrun_runs_a_bluefog_script_unchanged(tmp_path):
    text = (ROOT / "examples" / "bluefog" / "average_consensus.py").read_text()
    text = text.replace("import asyncddp.compat.bluefog as bf\n", "import bluefog.torch as bf\n")
    text = text.replace("from asyncddp.compat import topology_util\n", "from bluefog.common import topology_util\n")
    assert "asyncddp" not in text.split('"""')[-1]
    script = tmp_path / "bluefog_average_consensus.py"
    script.write_text(text)
    bfrun = Path(sys.executable).parent / "bfrun"
    assert bfrun.exists(), "bfrun is one of the package's console scripts: pip install -e ."
    done = subprocess.run([str(bfrun), "-np", "3", "python", str(script), "--virtual-topology", "ring",
                           "--max-iters", "150"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"^\[0\] consensus static ring ranks=3 iters=150 total_error=(\S+)$", done.stdout, re.M)
    assert match and float(match[1]) < 1e-9, done.stdout


@pytest.mark.timeout(240)
def test_ibfrun_starts_and_stops_engines_under_bluefogs_profile(tmp_path):
    ibfrun = Path(sys.executable).parent / "ibfrun"
    assert ibfrun.exists(), "ibfrun is one of the package's console scripts: pip install -e ."
    env = {**os.environ, "IPYTHONDIR": str(tmp_path)}

    def call(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ibfrun), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
                              stdin=subprocess.DEVNULL)

    started = call("start", "-np", "2")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert started.stdout.startswith("started 2 engines (profile bluefog)"), started.stdout
        assert (tmp_path / "profile_bluefog").is_dir()
    finally:
        stopped = call("stop")
    assert stopped.returncode == 0 and "stopped the interactive cluster of profile bluefog" in stopped.stdout
