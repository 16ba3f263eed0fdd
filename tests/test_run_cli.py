"""``asyncddp run`` end to end: the real CLI on the real mpirun, and every bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import asyncddp, invoke

ROOT = Path(__file__).resolve().parent.parent
HELLO = re.compile(r"^\[(\d+)\] hello from rank (\d+) of (\d+) ")


@pytest.mark.parametrize("num_ranks", [1, 2, 4, 3])
def test_hello_prints_one_prefixed_line_per_rank(num_ranks):
    done = asyncddp("run", "-np", str(num_ranks), "examples/hello.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    matches = [HELLO.match(line) for line in lines]
    assert all(matches) and len(lines) == num_ranks, done.stdout
    assert sorted((int(m[1]), int(m[2]), int(m[3])) for m in matches) == [(r, r, num_ranks) for r in range(num_ranks)]


def test_failing_rank_sets_exit_code_and_is_named():
    started = time.monotonic()
    done = asyncddp("run", "-np", "4", "examples/exit_code.py", "2", "7")
    elapsed = time.monotonic() - started
    assert done.returncode == 7, done.stderr
    assert elapsed < 10
    assert done.stderr.splitlines()[-1] == "asyncddp: job failed: rank 2 on localhost exited with code 7"
    # The others were waiting in a barrier: none got past it.
    assert "passed the barrier" not in done.stdout
    assert sorted(done.stdout.splitlines()) == [f"[{r}] rank {r} started" for r in range(4)]


def test_crashing_rank_without_finalize_is_named_too():
    done = asyncddp("run", "-np", "3", "-H", "localhost:3", "examples/exit_code.py", "1", "5", "--hard")
    assert done.returncode == 5
    assert done.stderr.splitlines()[-1] == "asyncddp: job failed: rank 1 on localhost exited with code 5"


def test_timeout_kills_the_job_with_124():
    started = time.monotonic()
    done = asyncddp("run", "-np", "2", "--timeout", "2", sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)")
    assert done.returncode == 124
    assert time.monotonic() - started < 15
    assert sorted(done.stdout.splitlines()) == ["[0] up", "[1] up"]
    assert done.stderr.splitlines()[-1] == "asyncddp: job timed out after 2 s (--timeout); all ranks were killed"


def test_timeout_prints_where_each_rank_was_stuck():
    script = ("import time, asyncddp as addp\naddp.init()\n"
              "def waiting_for_godot():\n    time.sleep(60)\nwaiting_for_godot()\n")
    done = asyncddp("run", "-np", "2", "--timeout", "3", sys.executable, "-c", script)
    assert done.returncode == 124
    for rank in (0, 1):
        assert f"[{rank}] Current thread" in done.stderr and f"[{rank}]   File \"<string>\", line 4 in waiting_for_godot" in done.stderr
    assert done.stderr.splitlines()[-1] == ("asyncddp: job timed out after 3 s (--timeout) (the ranks' Python "
                                            "stacks at that moment are above); all ranks were killed")


OUT_AND_ERR = ("import os, sys; r = os.environ['OMPI_COMM_WORLD_RANK']; print('out', r, *sys.argv[1:]); "
               "print('err', r, file=sys.stderr)")


def _logs_line(done: subprocess.CompletedProcess, output_dir: Path) -> Path:
    """The run's log folder, as its first stderr line names it."""
    match = re.fullmatch(r"asyncddp: this run's logs: (.+)/", done.stderr.splitlines()[0])
    assert match, done.stderr
    folder = Path(match.group(1))
    assert folder.parent == output_dir and re.fullmatch(r"run-\d{8}-\d{6}(-\d+)?", folder.name), folder
    return folder


def test_output_dir_writes_one_log_per_rank_and_still_echoes(tmp_path):
    done = asyncddp("run", "-np", "3", "--output-dir", str(tmp_path), sys.executable, "-c", OUT_AND_ERR)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["[0] out 0", "[1] out 1", "[2] out 2"]
    logs = _logs_line(done, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest", logs.name]  # nothing else of the job
    assert sorted(path.name for path in logs.iterdir()) == ["rank.0.log", "rank.1.log", "rank.2.log"]
    for rank in range(3):
        assert f"[{rank}] err {rank}" in done.stderr.splitlines()
        lines = (tmp_path / "latest" / f"rank.{rank}.log").read_text().splitlines()
        assert sorted(lines) == [f"err {rank}", f"out {rank}"]


def test_a_reused_output_dir_keeps_every_runs_logs_apart(tmp_path):
    first = asyncddp("run", "-np", "3", "--output-dir", str(tmp_path), sys.executable, "-c", OUT_AND_ERR, "first")
    second = asyncddp("run", "-np", "2", "--output-dir", str(tmp_path), sys.executable, "-c", OUT_AND_ERR, "second")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    old, new = _logs_line(first, tmp_path), _logs_line(second, tmp_path)
    assert old != new and (tmp_path / "latest").resolve() == new.resolve()
    assert sorted(path.name for path in old.iterdir()) == ["rank.0.log", "rank.1.log", "rank.2.log"]
    assert sorted(path.name for path in new.iterdir()) == ["rank.0.log", "rank.1.log"]  # no rank.2.log of the first
    for folder, word, ranks in ((old, "first", 3), (new, "second", 2)):
        for rank in range(ranks):
            lines = (folder / f"rank.{rank}.log").read_text().splitlines()
            assert sorted(lines) == [f"err {rank}", f"out {rank} {word}"]


def test_an_output_dir_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    for where, problem in ((tmp_path / "afile" / "sub", "Not a directory"),
                           (Path("/proc/asyncddp-x"), "No such file or directory")):
        done = asyncddp("run", "-np", "2", "--output-dir", str(where), "examples/hello.py")
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr == (f"asyncddp: error: --output-dir {where}: cannot create a folder there: {problem}; "
                               "give a directory you can write to\n")
    done = asyncddp("run", "-np", "2", "--output-dir", str(tmp_path / "afile"), "examples/hello.py")
    assert done.returncode == 2 and done.stderr == (f"asyncddp: error: --output-dir {tmp_path / 'afile'}: that is a "
                                                    "file, not a directory; give a directory (it is created if missing)\n")


def test_module_form_and_config_env(tmp_path):
    (tmp_path / "showenv.py").write_text("import os\nprint(os.environ['OMP_NUM_THREADS'], os.environ['ASYNCDDP_TIMELINE'])\n")
    timeline = tmp_path / "tl.json"
    done = asyncddp("run", "--config", "configs/localhost.yaml", "--timeline", str(timeline), "-m", "showenv",
                    env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [f"[0] 1 {timeline}", f"[1] 1 {timeline}"]


def test_arbitrary_command_passes_its_flags_through():
    done = asyncddp("run", "-np", "2", "-x", "GREETING=hi there", sys.executable, "-c",
                    "import os, sys; print(os.environ['GREETING'], sys.argv[1:])", "-x", "--np", "7")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["[0] hi there ['-x', '--np', '7']", "[1] hi there ['-x', '--np', '7']"]


def test_dry_run_json_runs_nothing(tmp_path):
    done = invoke("run", "-n", "3", "-H", "localhost:2", "--oversubscribe", "--dry-run", "--json", "examples/hello.py", "--x", "1")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["argv"][1:9] == ["-np", "3", "--host", "localhost:2", "--map-by", "slot:OVERSUBSCRIBE", "--bind-to", "none"]
    assert plan["argv"][-8:] == [sys.executable, "-m", "asyncddp.launcher.torch_shim", "-m", "mpi4py",
                                 "examples/hello.py", "--x", "1"]
    assert plan["rank_hosts"] == ["localhost"] * 3


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["-np", "2", "examples/missing.py"], {}, "script examples/missing.py not found"),
        (["-np", "5", "--hostfile", "hostfiles/localhost", "examples/hello.py"], {},
         "-np 5 is more than the 4 slots of hostfiles/localhost"),
        (["-np", "2", "--hostfile", "hostfiles/nope", "examples/hello.py"], {}, "hostfile hostfiles/nope does not exist"),
        (["-np", "2", "--hostfile", "{bad_hostfile}", "examples/hello.py"], {}, "{bad_hostfile}:2: unknown token 'slot=2'"),
        (["-np", "2", "-H", "a:0", "examples/hello.py"], {}, "-H entry 1 ('a:0'): slots='0'"),
        (["--config", "{bad_config}", "examples/hello.py"], {}, "{bad_config}:3: hosts[0].slotz: unknown key 'slotz'"),
        (["-np", "2", "examples/hello.py"], {"ASYNCDDP_MPIRUN": "/nonexistent/mpirun"},
         "ASYNCDDP_MPIRUN=/nonexistent/mpirun is not an executable file"),
        (["examples/hello.py"], {}, "give the number of ranks with -np N"),
        (["-np", "2"], {}, "no command to run"),
        (["-np", "2", "--mpi-args", "--mca btl 'self", "examples/hello.py"], {},
         "--mpi-args \"--mca btl 'self\": No closing quotation; balance the quotes"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, env, message):
    bad_hostfile = tmp_path / "hosts"
    bad_hostfile.write_text("localhost slots=2\nother slot=2\n")
    bad_config = tmp_path / "c.yaml"
    bad_config.write_text("hosts:\n  - name: localhost\n    slotz: 2\n")
    paths = {"bad_hostfile": str(bad_hostfile), "bad_config": str(bad_config)}
    done = invoke("run", *[arg.format(**paths) for arg in args], env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("asyncddp: error: " + message.format(**paths)), done.stderr
    assert done.stdout == ""


def test_per_host_python_runs_as_two_app_contexts(tmp_path):
    import socket

    other = str(Path(sys.executable).parent / "python3")
    config = tmp_path / "c.yaml"
    config.write_text(f"hosts:\n  - name: localhost\n    python: {other}\n  - name: {socket.gethostname()}\n")
    (tmp_path / "which.py").write_text("import sys\nprint(sys.executable)\n")
    done = asyncddp("run", "--config", str(config), str(tmp_path / "which.py"))
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [f"[0] {other}", f"[1] {sys.executable}"]


def test_unreachable_host_is_refused_by_the_ssh_preflight():
    started = time.monotonic()
    done = asyncddp("run", "-np", "1", "-H", "nonexistent.invalid", "examples/hello.py")
    assert done.returncode == 2 and time.monotonic() - started < 30
    assert done.stdout == ""  # mpirun never started
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(
        "asyncddp: error: SSH preflight failed for 1 of 1 remote hosts, mpirun not started: nonexistent.invalid (-H nonexistent.invalid): dns:"
    )
    assert "--no-preflight" in done.stderr


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client on PATH")
def test_unreachable_host_without_preflight_fails_fast_with_one_summary():
    started = time.monotonic()
    done = asyncddp("run", "--no-preflight", "-np", "1", "-H", "nonexistent.invalid", "examples/hello.py")
    assert done.returncode != 0 and time.monotonic() - started < 30
    assert "Could not resolve hostname nonexistent.invalid" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("asyncddp: job failed: mpirun could not start its daemon on nonexistent")


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    from asyncddp.launcher.log_dir import new_log_dir

    moment = time.mktime((2026, 12, 2, 10, 30, 12, 0, 0, -1))
    folders = [new_log_dir(str(tmp_path / "logs"), now=moment) for _ in range(3)]
    assert [Path(folder).name for folder in folders] == ["run-20261202-103012", "run-20261202-103012-2",
                                                         "run-20261202-103012-3"]
    assert os.readlink(tmp_path / "logs" / "latest") == "run-20261202-103012-3"
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "latest").write_text("the user's")  # a latest of the user's own is left alone
    assert Path(new_log_dir(str(tmp_path / "own"), now=moment)).is_dir()
    assert (tmp_path / "own" / "latest").read_text() == "the user's"
