"""Hostile cluster configs: alias bombs, injected ssh_config lines, bad names, users, ports, paths and
variables. Each is one line naming file:line, exit 2, bounded time and memory, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from asyncddp.errors import ConfigError
from asyncddp.launcher.config import parse_config_text
from asyncddp.launcher.run_config import RunOptions, merge_run_config
from asyncddp.launcher.hosts import HostSpec

ROOT = Path(__file__).resolve().parent.parent


def alias_bomb(levels: int) -> str:
    """A config whose hosts[0].slots is ``levels`` nested aliases: 9**levels strings when expanded."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "hosts:\n  - name: a\n    slots: [" + ", ".join(parts) + "]\n"


# The CLI under a 1 GiB address-space limit: an unbounded expansion dies with MemoryError there.
LIMITED = textwrap.dedent("""\
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from asyncddp.cli.main import main
    main(sys.argv[1:])
""")


def limited_cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LIMITED, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return done, time.monotonic() - started


@pytest.mark.parametrize("levels", [6, 8, 9])
@pytest.mark.parametrize("command", [["run", "--dry-run", "--config", "{}", "examples/hello.py"],
                                     ["doctor", "--config", "{}"]])
def test_alias_bomb_is_one_line_in_bounded_time_and_memory(tmp_path, levels, command):
    config = tmp_path / "bomb.yaml"
    config.write_text(alias_bomb(levels))
    assert config.stat().st_size < 600
    done, elapsed = limited_cli(*[part.format(config) for part in command])
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, done.stderr[:2000]
    if levels >= 7:  # 9**7 strings: past the expansion limit, refused before anything is built
        assert lines[0] == (f"asyncddp: error: {config}:3: this value expands through its aliases (*name) to "
                            "more than 1000000 values; no cluster config needs that many, write it out")
    else:  # small enough to build: the type error quotes a bounded excerpt
        assert lines[0].startswith(f"asyncddp: error: {config}:3: hosts[0].slots: expected a positive whole "
                                   "number (at most 1048576), got a list")
    assert elapsed < 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts:\n  - name: &a [*a]\n", "c.yaml:2: an alias refers to the list or mapping that contains it"),
        ("hosts:\n  - name: a\n    slots: " + "[" * 2000 + "]" * 2000 + "\n",
         "c.yaml: lists or mappings nested too deeply to read"),
        ("hosts:\n  - name: a\n? [x, y]\n: 1\n", "c.yaml:3: not valid YAML (a key must be plain text"),
        ("hosts:\n  - {name: a, ? {b: 1} : 2}\n", "c.yaml:2: not valid YAML (a key must be plain text"),
        ("hosts:\n  - name: a\n    slots: " + "9" * 5000 + "\n", "c.yaml:3: not valid YAML (a number of more than 32 digits)"),
    ],
)
def test_self_reference_deep_nesting_and_list_keys(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "c.yaml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_scalar_aliases_still_work():
    config = parse_config_text(
        "python: &py /opt/venv/bin/python\nhosts:\n  - name: a\n    python: *py\n  - name: b\n    python: *py\n",
        "c.yaml")
    assert [host.python for host in config.hosts] == ["/opt/venv/bin/python"] * 2


def test_huge_config_file_is_refused_before_parsing(tmp_path):
    from asyncddp.launcher.config import load_config

    big = tmp_path / "big.yaml"
    big.write_text("hosts:\n  - name: a\n" + "# padding\n" * 120_000)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"big.yaml is larger than 1 MiB, more than any YAML file needs; check the --config path"):
        load_config(big)
    with pytest.raises(ConfigError, match=r"/dev/zero is a character device, not a file"):
        load_config("/dev/zero")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a newline in a name would add ssh_config directives after "Host a"
        ('hosts:\n  - name: "a\\n    ProxyCommand touch /tmp/pwned"\n',
         "c.yaml:2: hosts[0].name: 'a\\n    ProxyCommand touch /tmp/pwned' holds the control character '\\n'"),
        ("hosts:\n  - name: -oProxyCommand=x\n", "c.yaml:2: hosts[0].name: host '-oProxyCommand=x' is not a host name"),
        ("hosts:\n  - name: 'node 1'\n", "c.yaml:2: hosts[0].name: host 'node 1' is not a host name"),
        ("hosts:\n  - name: a\n    user: 'al ice'\n", "c.yaml:3: hosts[0].user: user 'al ice' is not a login name"),
        ("hosts:\n  - name: a\n    user: -lroot\n", "c.yaml:3: hosts[0].user: user '-lroot' is not a login name"),
        ("hosts:\n  - name: a\nssh:\n  user: '%u'\n", "c.yaml:4: ssh.user: user '%u' is not a login name"),
        ("hosts:\n  - name: a\n    port: 70000\n", "c.yaml:3: hosts[0].port: an ssh port must be a whole number from 1 to 65535, got 70000"),
        ("hosts:\n  - name: a\nssh:\n  port: '22'\n", "c.yaml:4: ssh.port: an ssh port must be a whole number from 1 to 65535, got '22'"),
        ("hosts:\n  - name: a\n    identity_file: /k/my key\n",
         "c.yaml:3: hosts[0].identity_file: path '/k/my key' holds ' ', which ssh_config cannot take"),
        ("hosts:\n  - name: a\nssh:\n  known_hosts: /k/%d/kh\n",
         "c.yaml:4: ssh.known_hosts: path '/k/%d/kh' holds '%', which ssh_config cannot take"),
        ('hosts:\n  - name: a\n    python: "/usr/bin/python\\0"\n',
         "c.yaml:3: hosts[0].python: '/usr/bin/python\\x00' holds the control character '\\x00'"),
        ("hosts:\n  - name: a\n    slots: 2000000\n", "c.yaml:3: hosts[0].slots: expected a positive whole number (at most 1048576), got 2000000"),
        ("hosts:\n  - name: a\nenv:\n  set: {1X: 2}\n", "c.yaml:4: env.set: '1X' is not a variable name"),
        ("hosts:\n  - name: a\nenv:\n  set: {'A=B': 2}\n", "c.yaml:4: env.set: 'A=B' is not a variable name"),
        ("hosts:\n  - name: a\nenv:\n  forward: [HOME, 'A B']\n", "c.yaml:4: env.forward: 'A B' is not a variable name"),
        ("hosts:\n  - name: a\nmpi_args: --mca btl 'self\n", "c.yaml:3: mpi_args: No closing quotation in"),
    ],
)
def test_values_are_validated_with_file_line_and_path(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "c.yaml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_injected_name_writes_nothing_and_runs_nothing(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text('hosts:\n  - name: "node1\\nHost *\\n  ProxyCommand touch /tmp/x"\n    slots: 1\n')
    out = tmp_path / "logs"
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "--config", str(config), "--output-dir", str(out),
                           "examples/hello.py"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"asyncddp: error: {config}:2: hosts[0].name: 'node1\\nHost *\\n  ProxyCommand touch /tmp/x' "
                           "holds the control character '\\n'; remove it\n")
    assert not out.exists()


def test_ssh_defaults_skip_this_machine_and_its_own_port_means_ssh():
    config = parse_config_text(
        "hosts:\n  - name: localhost\n  - name: node2\n  - name: 127.0.0.1\n    port: 2222\n"
        "ssh:\n  user: alice\n  port: 22\n  identity_file: /k/id\n", "c.yaml")
    assert config.hosts == (
        HostSpec("localhost", 1, source="c.yaml:2 hosts[0]"),
        HostSpec("node2", 1, ssh_user="alice", ssh_port=22, identity_file="/k/id", source="c.yaml:3 hosts[1]"),
        HostSpec("127.0.0.1", 1, ssh_user="alice", ssh_port=2222, identity_file="/k/id", source="c.yaml:4 hosts[2]"),
    )
    run = merge_run_config(RunOptions(command=("t.py",), ssh_port=2200, host_list="localhost:1,node3:1"), environ={})
    assert [(host.name, host.ssh_port) for host in run.hosts] == [("localhost", None), ("node3", 2200)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RunOptions(command=("t.py",), num_ranks=1, timeout=float("nan")), "--timeout nan: give a positive number of seconds"),
        (RunOptions(command=("t.py",), num_ranks=1, timeout=float("inf")), "--timeout inf: give a positive number of seconds"),
        (RunOptions(command=("t.py",), num_ranks=1, timeout=0.0), "--timeout 0: give a positive number of seconds"),
        (RunOptions(command=("t.py",), num_ranks=1, timeout=1e300), "--timeout 1e+300: give a positive number of seconds, at most 100000000"),
        (RunOptions(command=("t.py",), num_ranks=1, env=("1X=2",)), "-x '1X=2': '1X' is not a variable name"),
        (RunOptions(command=("t.py",), num_ranks=1, env=("A-B",)), "-x 'A-B': 'A-B' is not a variable name"),
        (RunOptions(command=("t.py",), num_ranks=1, env=("É=1",)), "-x 'É=1': 'É' is not a variable name"),
        (RunOptions(command=("t.py",), num_ranks=1, env=("NCCL_*=1",)), "-x 'NCCL_*=1': 'NCCL_*' is not a variable name"),
        (RunOptions(command=("t.py",), num_ranks=1, network="eth0\n"), "--network-interface: 'eth0\\n' holds the control"),
        (RunOptions(command=("t.py",), num_ranks=10**9), "-np 1000000000: more ranks than asyncddp launches (at most 1048576)"),
        (RunOptions(command=("t.py",), num_ranks=1, host_list="a:2,b\nc"), "-H entry 2 ('b\\nc'): host 'b\\nc' is not a host name"),
    ],
)
def test_flag_values_are_validated(options, message):
    with pytest.raises(ConfigError) as caught:
        merge_run_config(options, environ={})
    assert str(caught.value).startswith(message), str(caught.value)


def test_env_flag_accepts_names_values_and_globs():
    run = merge_run_config(RunOptions(command=("t.py",), num_ranks=1, env=("A_1=x=y", "NCCL_*", "_B", "M=line1\nline2")),
                           environ={"_B": "1"})
    assert run.env_set == (("A_1", "x=y"), ("M", "line1\nline2"))
    assert run.env_forward == ("NCCL_*", "_B")


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-3"])
def test_timeout_flag_on_the_cli(value):
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "--dry-run", "-np", "1", "--timeout", value,
                           "examples/hello.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    shown = {"nan": "nan", "inf": "inf", "0": "0", "-3": "-3"}[value]
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"asyncddp: error: --timeout {shown}: give a positive number of seconds"), done.stderr


def test_timeline_path_is_checked_where_rank_0_writes_it(tmp_path):
    def merge(path, hosts="localhost:1"):
        return merge_run_config(RunOptions(command=("t.py",), num_ranks=1, host_list=hosts, timeline=str(path)),
                                environ={})

    assert merge(tmp_path / "t.json").timeline == str(tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()  # checked, not created
    with pytest.raises(ConfigError) as refused:
        merge(tmp_path / "new" / "t.json")
    assert str(refused.value) == (f"--timeline {tmp_path / 'new' / 't.json'}: the folder {tmp_path / 'new'} does not "
                                  "exist; create it first or give another path")
    with pytest.raises(ConfigError, match=r"^--timeline .*: is a folder; give a file name such as"):
        merge(tmp_path)
    with pytest.raises(ConfigError, match=r"^--timeline /proc/t.json: cannot write in /proc"):
        merge("/proc/t.json")
    with pytest.raises(ConfigError, match=r"^--timeline /dev/null: is a character device; give the path of a file"):
        merge("/dev/null")
    # Rank 0 on another host: the path is that host's, so it is passed on unchecked.
    assert merge("/proc/none/t.json", hosts="node1:1").timeline == "/proc/none/t.json"
