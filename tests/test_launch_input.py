"""What the launcher refuses before it starts anything, and how: input files that are not files,
scripts it must pass safely, working directories, and how a failed mpirun start is explained."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asyncddp.errors import ConfigError, HostfileError
from asyncddp.launcher.config import load_config
from asyncddp.launcher.hosts import parse_hostfile

ROOT = Path(__file__).resolve().parent.parent


def asyncddp(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    # A timeout here means the launcher hung: subprocess.run raises TimeoutExpired and kills it.
    return subprocess.run([sys.executable, "-m", "asyncddp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def odd_files(tmp_path):
    """A FIFO, a directory, a socket and a character device, each where a file is expected."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "folder"
    directory.mkdir()
    sock_path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    yield {"a FIFO (named pipe)": fifo, "a directory": directory, "a socket": sock_path,
           "a character device": Path("/dev/null")}
    server.close()


def test_input_files_that_are_not_files_are_refused_before_reading(odd_files):
    for kind, path in odd_files.items():
        with pytest.raises(HostfileError) as refused:
            parse_hostfile(path)
        assert str(refused.value) == f"hostfile {path} is {kind}, not a file; give a text file with --hostfile"
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert str(refused.value) == f"config {path} is {kind}, not a file; give a YAML file with --config"


@pytest.mark.parametrize("flag", ["--hostfile", "--config"])
def test_a_fifo_as_hostfile_or_config_is_one_line_not_a_hang(tmp_path, flag):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (["run", "-np", "1", flag, str(fifo), "--dry-run", "examples/hello.py"], ["doctor", flag, str(fifo)]):
        done = asyncddp(*args, timeout=30)
        what = "hostfile" if flag == "--hostfile" else "config"
        assert done.returncode == 2, done.stderr
        assert done.stderr == f"asyncddp: error: {what} {fifo} is a FIFO (named pipe), not a file; give a " \
                              f"{'text' if what == 'hostfile' else 'YAML'} file with {flag}\n"
