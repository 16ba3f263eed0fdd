"""Every ``--json`` command prints one JSON document on stdout, failures included: the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (command line, exit code, error type, start of the error message); {bad} is a hostfile with a bad line.
CASES = [
    (["doctor", "--json", "--hostfile", "{bad}"], 2, "HostfileError", "{bad}:2: unknown token 'cpus=4'"),
    (["doctor", "--json", "--hostfile", "{tmp}/missing"], 2, "HostfileError", "hostfile {tmp}/missing does not exist"),
    (["doctor", "--json", "-H", "a:0"], 2, "HostfileError", "-H entry 1 ('a:0'): slots='0' is not a positive"),
    (["doctor", "--json", "-H", "a", "--timeout", "inf"], 2, "ConfigError", "--timeout inf: give a positive number"),
    (["doctor", "--json", "--probe-timeout", "nan"], 2, "UsageError", "Invalid value for '--probe-timeout'"),
    (["doctor", "--json", "--timeout", "abc"], 2, "UsageError", "Invalid value for '--timeout'"),
    (["doctor", "--json", "-H", "a", "--known-hosts", "/dev/zero"], 2, "ConfigError",
     "known_hosts /dev/zero is not a regular file"),
    (["doctor", "--json", "--no-such-flag"], 2, "UsageError", "No such option: --no-such-flag"),
    (["run", "--dry-run", "--json", "-np", "2", "-x", "1X=2", "examples/hello.py"], 2, "ConfigError",
     "-x '1X=2': '1X' is not a variable name"),
    (["run", "--dry-run", "--json", "-np", "1", "--timeout", "nan", "examples/hello.py"], 2, "ConfigError",
     "--timeout nan: give a positive number"),
    (["run", "--dry-run", "--json", "-np", "1", "missing.py"], 2, "LaunchError", "script missing.py not found"),
    (["bench", "comm", "--json", "--iters", "0"], 2, "ConfigError", "--iters 0 --warmup 5: need iters >= 1"),
    (["bench", "mlp", "--json", "--hostfile", "{bad}"], 2, "HostfileError", "{bad}:2: unknown token 'cpus=4'"),
    (["bench", "NOSUCHMODEL", "--json"], 2, "UsageError", "No such command 'NOSUCHMODEL'"),
    (["bench", "--json"], 2, "UsageError", "No such option: --json"),
    (["bench", "straggler", "--json", "-np", "1"], 2, "ConfigError", "-np 1 --slow-rank 1: need at least 2 ranks"),
    (["run", "--dry-run", "--json", "-np", "1", "--timeline", "{tmp}", "examples/hello.py"], 2, "ConfigError",
     "--timeline {tmp}: is a folder; give a file name"),
    (["run", "--dry-run", "--json", "-np", "1", "--timeline", "/proc/t.json", "examples/hello.py"], 2,
     "ConfigError", "--timeline /proc/t.json: cannot write in /proc"),
    (["bench", "straggler", "--json", "-np", "2", "--slow-factor", "nan"], 2, "ConfigError",
     "--slow-factor nan: give a finite factor of at least 1"),
    (["bench", "comm", "--json", "--min-busbw", "nan"], 2, "ConfigError", "--min-busbw nan: give a positive bandwidth"),
    (["ipy", "start", "--json", "-np", "2", "--timeout", "inf"], 2, "ConfigError", "--timeout inf: give a positive"),
    (["topology", "show", "ring", "-n", "0", "--json"], 2, "TopologyError", "a topology needs a positive integer"),
    (["topology", "show", "ring", "-n", "100000000", "--json"], 2, "TopologyError",
     "-n 100000000: topology reports analyse dense n x n matrices; give at most 1024 ranks"),
    (["topology", "show", "ring", "-n", "4", "--steps", "-1", "--json"], 2, "TopologyError",
     "--steps -1: give a whole number of steps from 0 to 1000"),
    (["topology", "compare", "ring", "-n", "4", "--steps", "100000000", "--json"], 2, "TopologyError",
     "--steps 100000000: give a whole number of steps from 0 to 1000"),
    (["topology", "compare", "ring", "-n", "4", "-o", "{tmp}/no/plot.png", "--json"], 2, "TopologyError",
     "-o {tmp}/no/plot.png: folder {tmp}/no does not exist or is not writable"),
    (["topology", "compare", "ring", "nope", "-n", "4", "--json"], 2, "TopologyError", "unknown topology 'nope'"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case at once, each in its own process: the cases are independent and mostly waiting."""
    tmp = tmp_path_factory.mktemp("json")
    bad = tmp / "hosts.txt"
    bad.write_text("node1 slots=2\nnode2 cpus=4\n")
    names = {"bad": str(bad), "tmp": str(tmp)}
    running = []
    for argv, *expected in CASES:
        argv = [part.format(**names) for part in argv]
        process = subprocess.Popen([sys.executable, "-m", "asyncddp", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                   env={**os.environ, "COLUMNS": "200"})
        running.append((argv, process, expected))
    done = []
    for argv, process, (code, kind, message) in running:
        out, err = process.communicate(timeout=120)
        done.append((process.returncode, out, err, code, kind, message.format(**names)))
    return done


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(case[0][:4]) for case in CASES])
def test_input_errors_are_json_on_stdout(results, index):
    code, out, err, expected_code, kind, message = results[index]
    assert code == expected_code, err
    document = json.loads(out)  # the whole of stdout is one document
    assert document["status"] == "error" and document["exit_code"] == expected_code
    assert document["error_type"] == kind
    assert document["error"].startswith(message), document["error"]
    if kind != "UsageError":  # usage errors keep Typer's boxed message on stderr
        assert err == f"asyncddp: error: {document['error']}\n"


def test_script_flag_named_json_is_not_ours():
    """``run train.py --json``: --json belongs to the script, so an error stays one line on stderr."""
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "--dry-run", "-np", "1", "missing.py", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("asyncddp: error: script missing.py not found")


def test_failure_after_the_result_keeps_stdout_one_document():
    """bench comm --json below --min-busbw: the result is printed, then exit 1, with no second document."""
    done = subprocess.run([sys.executable, "-m", "asyncddp", "bench", "comm", "--json", "-np", "2", "-b", "1K", "-e", "1K",
                           "--iters", "1", "--warmup", "0", "--ops", "allreduce", "--min-busbw", "1e9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert [row["op"] for row in result["rows"]] == ["allreduce"]
    assert (result["status"], result["exit_code"]) == ("error", 1) and "--min-busbw 1e+09" in result["missed_bound"]
    assert done.stderr.splitlines()[-1].startswith("asyncddp: error: bench comm: average busbw ")
