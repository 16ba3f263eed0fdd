"""Slurm allocations: node list and task count parsing (literal values) and ``asyncddp run`` inside one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from asyncddp.launcher.run_config import RunOptions, merge_run_config
from asyncddp.errors import HostfileError
from asyncddp.launcher.slurm import expand_nodelist, expand_tasks_per_node, in_slurm_allocation, slurm_hosts
from tests.cli import invoke

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, names", [
    ("node01", ["node01"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("gpu[8-11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("x[3]-ib,y", ["x3-ib", "y"]),
    ("c1,c2, c3", ["c1", "c2", "c3"]),
])
def test_expand_nodelist(text, names):
    assert expand_nodelist(text) == names


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("node[01-04", "unclosed '['"),
    ("node01-04]", "']' without '['"),
    ("node[4-1]", "runs backwards"),
    ("node[a-b]", "bad range 'a-b'"),
    ("node[]", "bad range ''"),
    ("a,,b", "empty host name"),
    ("n[1[2]]", "nested"),
])
def test_bad_nodelist_names_the_variable(text, message):
    with pytest.raises(HostfileError, match="SLURM_JOB_NODELIST") as error:
        expand_nodelist(text)
    assert message in str(error.value)


@pytest.mark.parametrize("text, counts", [
    ("4", [4]),
    ("4(x3),2", [4, 4, 4, 2]),
    ("2,1(x2)", [2, 1, 1]),
    ("8(x1)", [8]),
])
def test_expand_tasks_per_node(text, counts):
    assert expand_tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["", "4(x)", "0", "4x3", "2(x0)", "-1"])
def test_bad_tasks_per_node(text):
    with pytest.raises(HostfileError, match="SLURM_TASKS_PER_NODE"):
        expand_tasks_per_node(text)


def test_slurm_hosts_with_tasks_per_node():
    env = {"SLURM_JOB_NODELIST": "node[01-03],gpu7", "SLURM_TASKS_PER_NODE": "4(x3),2", "SLURM_NTASKS": "14"}
    hosts = slurm_hosts(env)
    assert [(h.name, h.slots) for h in hosts] == [("node01", 4), ("node02", 4), ("node03", 4), ("gpu7", 2)]
    assert hosts[3].source == "SLURM_JOB_NODELIST gpu7"


def test_slurm_hosts_from_ntasks_block_distribution_and_default_one_slot():
    assert [h.slots for h in slurm_hosts({"SLURM_NODELIST": "a[1-3]", "SLURM_NTASKS": "8"})] == [3, 3, 2]
    assert [h.slots for h in slurm_hosts({"SLURM_JOB_NODELIST": "a[1-3]"})] == [1, 1, 1]


@pytest.mark.parametrize("env, message", [
    ({"SLURM_JOB_NODELIST": "a[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"}, "gives 2 counts but"),
    ({"SLURM_JOB_NODELIST": "a[1-3]", "SLURM_NTASKS": "2"}, "fewer than the 3 nodes"),
    ({"SLURM_JOB_NODELIST": "a[1-3]", "SLURM_NTASKS": "x"}, "SLURM_NTASKS='x'"),
    ({"SLURM_JOB_NODELIST": "a1,a[1-2]"}, "already listed"),
    ({}, "not inside a Slurm allocation"),
])
def test_slurm_hosts_errors(env, message):
    with pytest.raises(HostfileError) as error:
        slurm_hosts(env)
    assert message in str(error.value)


def test_merge_uses_the_allocation_only_without_other_hosts():
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2(x2)"}
    assert in_slurm_allocation(env) and not in_slurm_allocation({})
    config = merge_run_config(RunOptions(command=("x.py",)), environ=env)
    assert [(h.name, h.slots) for h in config.hosts] == [("n1", 2), ("n2", 2)]
    assert config.num_ranks == 4 and not config.oversubscribe
    assert config.host_source.startswith("Slurm allocation")
    config = merge_run_config(RunOptions(command=("x.py",), num_ranks=3), environ=env)
    assert config.num_ranks == 3
    # -H wins over the allocation.
    config = merge_run_config(RunOptions(command=("x.py",), host_list="localhost:2"), environ=env)
    assert [h.name for h in config.hosts] == ["localhost"]


def test_merge_ssh_port_and_infiniband_flags():
    options = RunOptions(command=("x.py",), host_list="a:1,b:1", ssh_port=2222, use_infiniband=True, mpi_args="--mca q r")
    config = merge_run_config(options, environ={})
    assert [h.ssh_port for h in config.hosts] == [2222, 2222]
    assert config.mpi_args == ("--mca", "pml", "ucx", "--mca", "q", "r")
    with pytest.raises(Exception, match="between 1 and 65535"):
        merge_run_config(RunOptions(command=("x.py",), num_ranks=1, ssh_port=70000), environ={})


def _dry_run(*args: str, env: dict) -> subprocess.CompletedProcess:
    # In-process: a dry run starts nothing. tests/conftest.py removed this machine's SLURM_* variables.
    return invoke("run", "--dry-run", *args, env=env)


def test_dry_run_inside_an_allocation_with_bfrun_flags():
    env = {"SLURM_JOB_NODELIST": "node[01-02],gpu7", "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_NTASKS": "5"}
    done = _dry_run("--json", "-p", "2222", "--use-infiniband", "--extra-mpi-flags", "--mca a b",
                    "--timeline-filename", "tl/run", "examples/hello.py", env=env)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    argv = plan["argv"]
    assert argv[argv.index("-np") + 1] == "5"
    assert argv[argv.index("--host") + 1] == "node01:2,node02:2,gpu7:1"
    assert plan["rank_hosts"] == ["node01", "node01", "node02", "node02", "gpu7"]
    assert [h["ssh_port"] for h in plan["hosts"]] == [2222] * 3
    joined = " ".join(argv)
    assert "--mca pml ucx --mca a b" in joined
    assert plan["env"]["ASYNCDDP_TIMELINE"] == str(ROOT / "tl/run")
    text = _dry_run("examples/hello.py", env=env)
    assert text.returncode == 0 and "node01" in text.stdout and "gpu7" in text.stdout


def test_dry_run_with_a_bad_allocation_is_one_line():
    done = _dry_run("examples/hello.py", env={"SLURM_JOB_NODELIST": "node[01-"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "asyncddp: error: SLURM_JOB_NODELIST: unclosed '[' in 'node[01-'"]
