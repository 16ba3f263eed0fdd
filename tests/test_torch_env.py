"""torchrun's variables: the launcher's job-wide half (``torch_env``), each rank's own half (the
``torch_shim`` every rank starts through), and the plan they go in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from asyncddp.errors import ConfigError
from asyncddp.launcher import torch_env
from asyncddp.launcher.hosts import HostSpec
from asyncddp.launcher.mpi import MpiFlavor, MpiInstall
from asyncddp.launcher.plan import build_plan, format_plan
from asyncddp.launcher.run_config import RunConfig, RunOptions, merge_run_config
from asyncddp.launcher.torch_env import TorchJob, master_addr
from asyncddp.launcher.torch_shim import mpi_ranks, rank_env
from tests.mpi_helpers import ROOT

PY = "/venv/bin/python"
OMPI5 = MpiFlavor("openmpi", "5.0.11", 5)
MPICH = MpiFlavor("mpich", "4.1.2", 4)
JOB = TorchJob(master_port=29500, run_id="asyncddp-abc")


def config(hosts, num_ranks, **extra) -> RunConfig:
    fields = dict(command=("train.py",), num_ranks=num_ranks, hosts=hosts, host_source="h", oversubscribe=False,
                  torch=JOB)
    return RunConfig(**{**fields, **extra})


def plan(cfg, flavor=OMPI5, environ=None):
    return build_plan(cfg, MpiInstall("/venv/bin/mpirun", flavor), python=PY, euid=1000, environ=environ or {},
                      private_dir="/priv")


def test_each_flavours_own_variables_give_the_ranks():
    ompi = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    hydra = {"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "3"}
    assert mpi_ranks(ompi) == (5, 8, 1, 4)
    assert mpi_ranks(hydra) == (2, 3, 2, 3)
    assert mpi_ranks({}) is None and mpi_ranks({**hydra, "PMI_RANK": ""}) is None


def test_rank_env_from_the_layout_and_the_users_own_names():
    env = {torch_env.NODES_ENV: "4,4", "ASYNCDDP_RESTART_COUNT": "2"}
    assert rank_env((5, 8, 1, 4), env) == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "ROLE_RANK": "5",
        "ROLE_WORLD_SIZE": "8", "TORCHELASTIC_RESTART_COUNT": "2", "GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2"}
    # Uneven nodes (3 slots, then 1): rank 3 is node 1's only rank.
    uneven = rank_env((3, 4, 0, 1), {torch_env.NODES_ENV: "3,1"})
    assert (uneven["GROUP_RANK"], uneven["LOCAL_WORLD_SIZE"], uneven["TORCHELASTIC_RESTART_COUNT"]) == ("1", "1", "0")
    # mpirun placed the rank otherwise than planned: no node index rather than a wrong one.
    assert "GROUP_RANK" not in rank_env((1, 4, 0, 2), {torch_env.NODES_ENV: "2,2"})
    kept = rank_env((0, 2, 0, 2), {torch_env.NODES_ENV: "2", torch_env.KEEP_ENV: "RANK,LOCAL_RANK"})
    assert "RANK" not in kept and "LOCAL_RANK" not in kept and kept["WORLD_SIZE"] == "2"


def test_master_addr_is_rank_0s_host_as_the_others_reach_it():
    local = (HostSpec("localhost", 2),)
    assert master_addr(local, "localhost") == "127.0.0.1"
    remote = (HostSpec("node1", 2), HostSpec("node2", 2))
    assert master_addr(remote, "node1") == "node1"
    mixed = (HostSpec("localhost", 2), HostSpec("node2", 2))
    assert master_addr(mixed, "localhost", this_host="head") == "head"
    # A name of this machine reached over ssh (a container behind sshd on :2222) is another host.
    assert master_addr((HostSpec("127.0.0.1", 1, ssh_port=2222),), "127.0.0.1") == "127.0.0.1"


def test_the_plan_wraps_every_rank_and_sets_the_job_variables():
    result = plan(config((HostSpec("node1", 2), HostSpec("node2", 1)), 3))
    # A Python rank goes on in the shim's interpreter (-m mpi4py), any other command is exec'd.
    assert list(result.argv[-6:]) == [PY, "-m", "asyncddp.launcher.torch_shim", "-m", "mpi4py", "train.py"]
    assert {name: result.env[name] for name in torch_env.JOB_NAMES} == {
        "MASTER_ADDR": "node1", "MASTER_PORT": "29500", "ROLE_NAME": "default",
        "TORCHELASTIC_RUN_ID": "asyncddp-abc", "TORCHELASTIC_MAX_RESTARTS": "0"}
    assert result.env[torch_env.NODES_ENV] == "2,1" and torch_env.KEEP_ENV not in result.env
    assert ("-x", "MASTER_PORT") in result.groups and ("-x", torch_env.NODES_ENV) in result.groups
    ranks = result.to_dict()["torch_env"]
    assert [(r["RANK"], r["LOCAL_RANK"], r["LOCAL_WORLD_SIZE"], r["GROUP_RANK"]) for r in ranks] == [
        ("0", "0", "2", "0"), ("1", "1", "2", "0"), ("2", "0", "1", "1")]
    text = format_plan(result)
    assert "   2  node2                             0                1          1" in text.splitlines()
    # An arbitrary command is wrapped too, under MPICH as under Open MPI.
    mpich = plan(config((HostSpec("localhost", 2),), 2, command=("hostname", "-s")), flavor=MPICH)
    assert list(mpich.argv[-5:]) == [PY, "-m", "asyncddp.launcher.torch_shim", "hostname", "-s"]
    assert plan(config((HostSpec("a", 1),), 1, max_restarts=3)).env["TORCHELASTIC_MAX_RESTARTS"] == "3"
    assert mpich.env["MASTER_ADDR"] == "127.0.0.1" and "MASTER_ADDR" in mpich.argv[mpich.argv.index("-genvlist") + 1]


def test_the_users_own_values_win():
    hosts = (HostSpec("localhost", 2),)
    result = plan(config(hosts, 2, env_set=(("MASTER_PORT", "1234"), ("RANK", "7")), env_forward=("MASTER_A*",)),
                  environ={"MASTER_ADDR": "10.0.0.9"})
    assert result.env["MASTER_PORT"] == "1234" and "MASTER_ADDR" not in result.env
    assert ("-x", "MASTER_ADDR") in result.groups and result.env[torch_env.KEEP_ENV] == "RANK"
    assert format_plan(result).endswith("; kept as you set them: RANK")
    # The emulated cluster's node 0 address replaces the host list's answer.
    emulated = plan(config(hosts, 2, torch=TorchJob(1, "r", master_addr="10.232.5.1")))
    assert emulated.env["MASTER_ADDR"] == "10.232.5.1"


def test_fault_tolerant_and_per_host_pythons_keep_the_shim_inside():
    guarded = plan(config((HostSpec("localhost", 2),), 2, fault_tolerant=True))
    assert list(guarded.argv[-9:]) == [PY, "-m", "asyncddp.launcher.rank_guard", PY, "-m",
                                       "asyncddp.launcher.torch_shim", "-m", "mpi4py", "train.py"]
    hosts = (HostSpec("node1", 1, python="/a/python"), HostSpec("node2", 1))
    split = plan(config(hosts, 2, command=("hostname",)))
    line = list(split.argv)
    assert line[line.index(":") - 4:line.index(":")] == ["/a/python", "-m", "asyncddp.launcher.torch_shim", "hostname"]
    assert line[-4:] == [PY, "-m", "asyncddp.launcher.torch_shim", "hostname"]


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_master_port_out_of_range_is_one_line(port):
    with pytest.raises(ConfigError, match=rf"^--master-port {port}: give a port between 1 and 65535$"):
        merge_run_config(RunOptions(command=("t.py",), num_ranks=2, master_port=port))
    assert merge_run_config(RunOptions(command=("t.py",), num_ranks=2, master_port=29500)).torch.master_port == 29500


def test_plan_job_picks_a_free_port_and_a_run_id_once(tmp_path):
    from asyncddp.launcher.prepare import plan_job

    (tmp_path / "t.py").write_text("")
    options = RunOptions(command=(str(tmp_path / "t.py"),), num_ranks=2)
    job = plan_job(options, str(tmp_path))
    port = int(job.plan.env["MASTER_PORT"])
    assert 0 < port < 65536 and job.plan.env["TORCHELASTIC_RUN_ID"].startswith("asyncddp-")
    pinned = plan_job(RunOptions(command=(str(tmp_path / "t.py"),), num_ranks=2, master_port=4321), str(tmp_path))
    assert pinned.plan.env["MASTER_PORT"] == "4321"


def _shim(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("OMPI_", "PMI_", "PMIX_", "MPI_LOCAL"))}
    return subprocess.run([sys.executable, "-m", "asyncddp.launcher.torch_shim", *command], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_the_shim_sets_the_variables_and_execs_the_command():
    show = [sys.executable, "-c", "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
            "('RANK', 'LOCAL_RANK', 'GROUP_RANK', 'WORLD_SIZE', 'MASTER_PORT')}))"]
    env = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2",
           torch_env.NODES_ENV: "2,2", "RANK": "99", "MASTER_PORT": "1"}
    done = _shim(show, env)
    assert done.returncode == 0, done.stderr
    # RANK from the calling shell is replaced; MASTER_PORT is the launcher's (job-wide) business.
    assert json.loads(done.stdout) == {"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "4",
                                       "MASTER_PORT": "1"}
    kept = _shim(show, {**env, torch_env.KEEP_ENV: "RANK"})
    assert json.loads(kept.stdout)["RANK"] == "99"



def test_a_module_runs_in_the_shims_interpreter_as_python_m_would(tmp_path):
    (tmp_path / "probe.py").write_text("import os, sys\nprint(os.environ['RANK'], __name__, sys.argv[1:], os.getpid())\n"
                                       "sys.exit(3)\n")
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = _shim(["-m", "probe", "--flag", "x"], env)
    rank, name, args, _ = done.stdout.split(" ", 3)
    assert (done.returncode, rank, name, args) == (3, "1", "__main__", "['--flag',"), done.stderr


def test_the_shim_outside_mpirun_or_without_its_command_is_one_line():
    done = _shim(["true"], {})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not started by mpirun" in done.stderr
    missing = _shim(["no-such-program-x"], {"PMI_RANK": "0", "PMI_SIZE": "1", "MPI_LOCALRANKID": "0",
                                            "MPI_LOCALNRANKS": "1"})
    assert missing.returncode == 127 and missing.stderr.startswith("asyncddp: rank 0: cannot start no-such-program-x")
