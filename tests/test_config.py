"""YAML cluster configs and the flag > file > default merge, with literal expected values."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncddp.launcher.config import ClusterConfig, SshSettings, load_config, parse_config_text
from asyncddp.launcher.run_config import RunOptions, merge_run_config
from asyncddp.errors import ConfigError, HostfileError
from asyncddp.launcher.hosts import HostSpec

ROOT = Path(__file__).resolve().parent.parent

SMALL = """\
hosts:
  - name: a
    slots: 2
  - name: b
    slots: 3
    user: bob
    python: /opt/py
ssh:
  user: alice
  port: 2222
env:
  forward: [HOME, "NCCL_*"]
  set: {OMP_NUM_THREADS: 1, EMPTY: }
network: eth1
mpi_args: --mca btl ^openib
working_dir: /srv/job
np: 4
"""


def test_parse_small_config():
    config = parse_config_text(SMALL, "c.yaml")
    assert config == ClusterConfig(
        source="c.yaml",
        hosts=(
            HostSpec("a", 2, ssh_user="alice", ssh_port=2222, source="c.yaml:2 hosts[0]"),
            HostSpec("b", 3, ssh_user="bob", ssh_port=2222, python="/opt/py", source="c.yaml:4 hosts[1]"),
        ),
        ssh=SshSettings(user="alice", port=2222),
        env_forward=("HOME", "NCCL_*"),
        env_set=(("OMP_NUM_THREADS", "1"), ("EMPTY", "")),
        network="eth1",
        mpi_args=("--mca", "btl", "^openib"),
        working_dir="/srv/job",
        num_ranks=4,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts:\n  - name: a\n    slotz: 2\n", "c.yaml:3: hosts[0].slotz: unknown key 'slotz'"),
        ("hosts:\n  - name: a\nsssh: {}\n", "c.yaml:3: sssh: unknown key 'sssh'"),
        ("hosts:\n  - name: a\nssh:\n  usr: x\n", "c.yaml:4: ssh.usr: unknown key 'usr'"),
        ("hosts:\n  - name: a\nenv:\n  forwrd: [A]\n", "c.yaml:4: env.forwrd: unknown key 'forwrd'"),
        ("hosts:\n  - name: a\n    slots: two\n", "c.yaml:3: hosts[0].slots: expected a positive whole number"),
        ("hosts:\n  - name: a\n    port: 0\n", "c.yaml:3: hosts[0].port: an ssh port must be a whole number from 1 to 65535"),
        ("hosts:\n  - slots: 2\n", "c.yaml:2: hosts[0]: every host needs a 'name'"),
        ("hosts: []\n", "c.yaml:1: hosts: give a non-empty list of hosts"),
        ("np: 2\n", "c.yaml:1: hosts: give a non-empty list"),
        ("hosts:\n  - name: a\n  bad indent: [\n", "c.yaml:3: not valid YAML"),
        ("- a\n- b\n", "c.yaml:1: : expected a mapping"),
        ("hosts:\n  - name: a\nenv:\n  set: [A]\n", "c.yaml:4: env.set: expected a mapping NAME: value"),
    ],
)
def test_config_errors_name_file_line_and_path(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "c.yaml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_duplicate_host_in_config():
    with pytest.raises(HostfileError, match=r"c.yaml:3 hosts\[1\]: host 'a' is already listed at c.yaml:2"):
        parse_config_text("hosts:\n  - name: a\n  - name: a\n", "c.yaml")


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; check the --config path"):
        load_config(tmp_path / "none.yaml")


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert {path.name for path in files} >= {"cluster.example.yaml", "localhost.yaml"}
    configs = {path.name: load_config(path) for path in files}
    example = configs["cluster.example.yaml"]
    assert [(h.name, h.slots, h.ssh_user, h.ssh_port) for h in example.hosts] == [
        ("node1", 4, "alice", 22), ("node2", 4, "trainer", 2222)]
    assert example.hosts[1].max_slots == 8 and example.hosts[1].python == "/opt/venv/bin/python"
    assert example.ssh.known_hosts.endswith("/.ssh/known_hosts") and not example.ssh.known_hosts.startswith("~")
    assert example.env_set == (("OMP_NUM_THREADS", "4"), ("NCCL_DEBUG", "WARN"))
    assert example.network == "10.0.0.0/24" and example.num_ranks == 8
    local = configs["localhost.yaml"]
    assert local.hosts == (HostSpec("localhost", 2, source=f"{ROOT}/configs/localhost.yaml:4 hosts[0]"),)
    assert local.num_ranks == 2 and local.env_set == (("OMP_NUM_THREADS", "1"),)


def test_merge_defaults_to_localhost_with_oversubscribe():
    run = merge_run_config(RunOptions(command=("t.py",), num_ranks=3), environ={})
    assert run.hosts == (HostSpec("localhost", 3, source="default"),)
    assert (run.num_ranks, run.host_source, run.oversubscribe) == (3, "default", True)


def test_merge_flags_override_file_and_file_overrides_defaults():
    cluster = parse_config_text(SMALL, "c.yaml")
    from_file = merge_run_config(RunOptions(command=("t.py",)), cluster, environ={})
    assert (from_file.num_ranks, from_file.network, from_file.working_dir, from_file.oversubscribe) == (4, "eth1", "/srv/job", False)
    assert from_file.host_source == "c.yaml"
    flags = RunOptions(command=("t.py", "--lr", "1"), num_ranks=2, host_list="x:2", env=("OMP_NUM_THREADS=8", "FOO"),
                       network="10.1.0.0/16", mpi_args="--mca pml ob1", timeout=5, timeline="tl.json")
    run = merge_run_config(flags, cluster, environ={"FOO": "1"})
    assert run.hosts == (HostSpec("x", 2, source="-H x"),) and run.host_source == "-H x:2"
    assert run.num_ranks == 2 and run.network == "10.1.0.0/16" and run.timeout == 5
    assert run.env_forward == ("HOME", "NCCL_*", "FOO")
    assert run.env_set == (("OMP_NUM_THREADS", "8"), ("EMPTY", ""))
    assert run.mpi_args == ("--mca", "btl", "^openib", "--mca", "pml", "ob1")
    assert run.command == ("t.py", "--lr", "1") and Path(run.timeline).is_absolute()


def test_merge_takes_all_slots_when_np_missing():
    run = merge_run_config(RunOptions(command=("t.py",), host_list="a:2,b:3"), environ={})
    assert run.num_ranks == 5 and not run.oversubscribe


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (RunOptions(), "no command to run"),
        (RunOptions(command=("t.py",)), "give the number of ranks with -np N"),
        (RunOptions(command=("t.py",), num_ranks=0), "-np 0: the number of ranks must be at least 1"),
        (RunOptions(command=("t.py",), num_ranks=1, env=("UNSET_X",)), "-x UNSET_X: UNSET_X is not set"),
        (RunOptions(command=("t.py",), num_ranks=1, env=("=1",)), "-x '=1': expected NAME"),
        (RunOptions(command=("t.py",), num_ranks=1, hostfile="h", host_list="a"), "give either --hostfile or -H"),
        (RunOptions(command=("t.py",), num_ranks=1, timeout=-1), "--timeout -1: give a positive number"),
    ],
)
def test_merge_errors(options, message):
    with pytest.raises(ConfigError) as caught:
        merge_run_config(options, environ={})
    assert str(caught.value).startswith(message)
