"""tests/cli.py: the in-process runner gives what the real command gives, so option checks can use it."""

import pytest

from asyncddp.cli.main import app
from tests.cli import asyncddp, invoke


@pytest.mark.parametrize("argv", [
    ("run", "-np", "2", "examples/missing.py"),  # an AsyncDDPError: one line, exit 2
    ("run", "--no-such-flag", "examples/hello.py"),  # a usage error Typer formats itself
    ("bench", "comm", "--iters", "0", "--json"),  # the JSON error document on stdout
    ("topology", "show", "exp2", "-n", "4", "--json"),  # success: a report on stdout
])
def test_in_process_matches_the_real_entry_point(argv):
    real, here = asyncddp(*argv), invoke(*argv)
    assert (here.returncode, here.stdout, here.stderr) == (real.returncode, real.stdout, real.stderr)
    assert real.returncode == (0 if argv[0] == "topology" else 2) and real.stdout + real.stderr


def test_the_real_process_reports_its_pid():
    done = asyncddp("--version")
    assert (done.returncode, done.stderr) == (0, "") and done.stdout.startswith("asyncddp ")
    assert done.pid > 0 and done.args[1:3] == ["-m", "asyncddp"]


def test_running_main_again_registers_no_command_twice():
    invoke("--version")
    commands, groups = list(app.registered_commands), list(app.registered_groups)
    assert invoke("--version").returncode == 0 and invoke("topology", "show", "ring", "-n", "3").returncode == 0
    assert (app.registered_commands, app.registered_groups) == (commands, groups)
    assert {command.name for command in commands} >= {"run", "doctor"}
