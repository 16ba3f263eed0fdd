"""What the launcher refuses before it starts anything, and how: input files that are not files,
scripts it must pass safely, working directories, and how a failed mpirun start is explained."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asyncddp.errors import ConfigError, HostfileError
from asyncddp.launcher.config import load_config
from asyncddp.launcher.hosts import parse_hostfile
from tests.cli import asyncddp, invoke

ROOT = Path(__file__).resolve().parent.parent


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


def test_a_script_named_like_an_option_is_passed_as_a_path(tmp_path):
    from asyncddp.launcher.plan import resolve_command

    (tmp_path / "-dash.py").write_text("")
    (tmp_path / "-tool").write_text("")
    assert resolve_command(("-dash.py", "-x"), "py", str(tmp_path)) == ("py", "-m", "mpi4py", "./-dash.py", "-x")
    assert resolve_command(("-tool", "-x"), "py", str(tmp_path)) == ("./-tool", "-x")
    assert resolve_command(("train.py",), "py") == ("py", "-m", "mpi4py", "train.py")


def test_a_dash_script_runs_on_every_rank(tmp_path):
    (tmp_path / "-dash.py").write_text("import sys\nfrom mpi4py import MPI\nprint('dash', MPI.COMM_WORLD.rank, sys.argv[1:])\n")
    done = asyncddp("run", "-np", "2", "--", "-dash.py", "-x", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["[0] dash 0 ['-x']", "[1] dash 1 ['-x']"]


def test_a_directory_given_as_the_script_is_named_a_directory(tmp_path):
    from asyncddp.errors import LaunchError
    from asyncddp.launcher.plan import resolve_command

    (tmp_path / "train.py").mkdir()
    (tmp_path / "tool").mkdir()
    with pytest.raises(LaunchError) as refused:
        resolve_command(("train.py",), "py", str(tmp_path))
    assert str(refused.value) == f"script train.py is a directory, not a file (looked in {tmp_path}); give the script's path"
    with pytest.raises(LaunchError, match=r"^script tool is a directory, not a file"):
        resolve_command(("tool",), "py", str(tmp_path))
    with pytest.raises(LaunchError, match=r"^script missing.py not found"):
        resolve_command(("missing.py",), "py", str(tmp_path))


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text("hosts:\n  - name: localhost\n    slots: 1\n" + text)
    return path


def test_a_missing_or_file_working_dir_is_refused_before_launch(tmp_path):
    (tmp_path / "plain").write_text("")
    for folder, why in ((tmp_path / "gone", "does not exist"), (tmp_path / "plain", "is not a regular file, not a directory")):
        config = _config(tmp_path, f"working_dir: {folder}\n")
        done = invoke("run", "--config", str(config), "--dry-run", "examples/hello.py")
        assert done.returncode == 2
        assert done.stderr.startswith(f"asyncddp: error: {config}:4: working_dir {folder} ")
        assert done.stderr.count("\n") == 1 and "mpirun installation" not in done.stderr


def test_a_start_failure_names_its_real_cause(tmp_path):
    from asyncddp.launcher.job import run_plan
    from asyncddp.errors import LaunchError
    from asyncddp.launcher.mpi import MpiFlavor
    from asyncddp.launcher.plan import LaunchPlan

    def refusal(**changes) -> str:
        fields = {"argv": ("/bin/true",), "env": {}, "rank_hosts": ("localhost",), "hosts": (),
                  "flavor": MpiFlavor("openmpi", "5.0.0", 5), **changes}
        with pytest.raises(LaunchError) as refused:
            run_plan(LaunchPlan(**fields))
        return str(refused.value)

    assert refusal(env={"BIG": "x" * 200_000}) == (
        "cannot start /bin/true: its arguments and environment are too large to pass to a program (Argument list "
        "too long); the largest is the variable BIG (200000 bytes; Linux takes at most 128 KiB for one): pass "
        "large values in a file instead")
    assert refusal(cwd=str(tmp_path / "gone")) == (
        f"cannot start /bin/true in the working directory {tmp_path / 'gone'}: No such file or directory; "
        "create it or fix working_dir")
    assert refusal(argv=(str(tmp_path / "mpirun"),)).endswith("check the mpirun installation (ASYNCDDP_MPIRUN, PATH)")


def test_a_huge_env_set_value_is_named_when_mpirun_cannot_start(tmp_path):
    config = _config(tmp_path, f"env:\n  set:\n    BIG: {'x' * 200_000}\n")
    done = asyncddp("run", "--config", str(config), "examples/hello.py")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "the largest is the variable BIG (200000 bytes" in done.stderr


def test_env_set_values_reach_the_ranks_as_written():
    from asyncddp.launcher.config import parse_config_text

    text = "hosts: [{name: a}]\nenv:\n  set: {B: true, Y: yes, N: 010, F: 1.50, S: text, Q: 'True', E: }\n"
    assert parse_config_text(text, "c.yaml").env_set == (
        ("B", "true"), ("Y", "yes"), ("N", "010"), ("F", "1.50"), ("S", "text"), ("Q", "True"), ("E", ""))


@pytest.mark.parametrize(("value", "message"), [
    ("10.0.0.0/33", "--network-interface '10.0.0.0/33': not a subnet ("),
    ("10.0.0.5", "--network-interface '10.0.0.5': an address, not an interface or subnet"),
    ("eth0/1", "--network-interface 'eth0/1': not a subnet ("),
    ("x" * 16, "--network-interface 'xxxxxxxxxxxxxxxx': 'xxxxxxxxxxxxxxxx' is not an interface name"),
    ("eth0,,eth1", "--network-interface 'eth0,,eth1': '' is not an interface name"),
    ("-oProxy", "--network-interface '-oProxy': '-oProxy' is not an interface name"),
    ("eth0 eth1", "--network-interface 'eth0 eth1': 'eth0 eth1' is not an interface name"),
])
def test_network_values_are_checked(value, message):
    from asyncddp.launcher.run_config import RunOptions, merge_run_config

    with pytest.raises(ConfigError) as refused:
        merge_run_config(RunOptions(command=("t.py",), num_ranks=1, network=value), environ={})
    assert str(refused.value).startswith(message), str(refused.value)


def test_good_network_values_pass_and_the_config_names_its_line():
    from asyncddp.launcher.config import parse_config_text
    from asyncddp.launcher.run_config import RunOptions, merge_run_config

    for value in ("eth0", "ib0,eth1", "enp3s0f1", "10.0.0.0/24", "10.0.0.7/24", "fd00::/64", "br-1.100"):
        assert merge_run_config(RunOptions(command=("t.py",), num_ranks=1, network=value), environ={}).network == value
    with pytest.raises(ConfigError, match=r"^c.yaml:2: network '10.0.0.0/33': not a subnet"):
        parse_config_text("hosts: [{name: a}]\nnetwork: 10.0.0.0/33\n", "c.yaml")


def test_host_names_are_case_insensitive():
    from asyncddp.launcher.hosts import launches_over_ssh, mpirun_host_name, parse_host_list

    upper = parse_host_list("LOCALHOST:2")[0]
    assert not launches_over_ssh(upper) and mpirun_host_name(upper) == "localhost"
    with pytest.raises(HostfileError, match=r"^-H LOCALHOST: host 'LOCALHOST' is already listed at -H localhost"):
        parse_host_list("localhost:2,LOCALHOST:2")


def test_an_ipv6_address_takes_slots_in_brackets():
    from asyncddp.launcher.hosts import HostSpec, parse_host_list

    assert parse_host_list("[::1]:2,[fd00::2],fd00::3") == [
        HostSpec("::1", 2, source="-H ::1"), HostSpec("fd00::2", 1, source="-H fd00::2"),
        HostSpec("fd00::3", 1, source="-H fd00::3")]
    for item, message in (("[node1]:2", "'node1' is not an IPv6 address"), ("[::1]2", "write an IPv6 address with "
                          "slots as [fd00::2]:4"), ("[::1", "write an IPv6 address"), ("[::1]:0", "slots='0'")):
        with pytest.raises(HostfileError, match=re.escape(message)):
            parse_host_list(item)


def test_arguments_that_are_not_utf8_are_shown_faithfully(tmp_path):
    import json
    import shlex

    from asyncddp.launcher.argv_text import json_safe, shell_join

    raw = os.fsdecode(b"caf\xe9 'x'\n")  # Latin-1 bytes, a quote and a newline
    line = shell_join(["python", raw, "plain arg"])
    assert line == "python $'caf\\xe9 \\'x\\'\\x0a' 'plain arg'"
    shell = subprocess.run(["bash", "-c", f"printf '%s|' {line}"], capture_output=True)
    assert shell.stdout == b"python|caf\xe9 'x'\n|plain arg|"  # bash reads back the exact bytes
    assert shell_join(["a b", "c"]) == shlex.join(["a b", "c"])
    assert json.dumps(json_safe({"argv": [raw]}), ensure_ascii=False) == '{"argv": ["caf\ufffd \'x\'\\n"]}'
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "1", "--dry-run", "--json", "python",
                           os.fsencode(raw)], cwd=ROOT, capture_output=True, timeout=60)
    plan = json.loads(done.stdout)
    assert plan["argv"][-1] == "caf\ufffd 'x'\n" and plan["command_line"].endswith(" python $'caf\\xe9 \\'x\\'\\x0a'")
    assert b"\\udc" not in done.stdout
