"""doctor's checks on literal probe output, the probe's parsers, and the CLI on localhost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from asyncddp.doctor import checks
from asyncddp.doctor.core import PROBE_TEXT
from asyncddp.doctor.probe import parse_mpirun_version, parse_ompi_cuda
from asyncddp.doctor.report import CheckResult, DoctorReport, NodeReport
from asyncddp.launcher.hosts import HostSpec
from tests.mpi_helpers import pid_is_running


def probe(hostname="n1", torch_version="2.13.0", nccl=None, gpus=(), mpi="5.0.11", interfaces=None, **extra):
    data = {
        "hostname": hostname,
        "python": {"executable": "/usr/bin/python3", "version": "3.11.7"},
        "asyncddp": "0.1.0",
        "torch": {"version": torch_version, "cuda_build": "12.4" if gpus else None,
                  "cuda_available": bool(gpus), "gpus": list(gpus), "nccl": nccl},
        "nvml": None,
        "mpi": {"mpirun": "/usr/bin/mpirun", "implementation": "Open MPI", "version": mpi,
                "mpi4py": "4.1.2", "mpi4py_library": {"library_version": f"Open MPI v{mpi}, package"}},
        "on_path": {"mpirun": "/usr/bin/mpirun", "prted": "/usr/bin/prted", "orted": None},
        "shm_bytes": 8 * 1024**3,
        "memlock_bytes": None,
        "interfaces": interfaces if interfaces is not None else [
            {"name": "lo", "address": "127.0.0.1", "subnet": "127.0.0.0/8"}],
        "reachability": {},
    }
    data.update(extra)
    return data


H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85 * 1024**3}


def by_name(results):
    return {r.name: (r.status, r.detail) for r in results}


def test_version_difference_between_nodes_fails():
    results, _ = checks.cluster_checks({"a": probe("a"), "b": probe("b", torch_version="2.5.1", mpi="4.1.6")}, [])
    found = by_name(results)
    assert found["same torch"] == ("fail", "differs: a: 2.13.0, b: 2.5.1")
    assert found["same mpi"] == ("fail", "differs: a: Open MPI 5.0.11, b: Open MPI 4.1.6")
    assert found["same python"] == ("ok", "3.11.7 on 2 node(s)")


def test_shared_subnet_prefers_real_network_over_loopback():
    a = [{"name": "lo", "address": "127.0.0.1", "subnet": "127.0.0.0/8"},
         {"name": "eth0", "address": "10.1.2.3", "subnet": "10.1.0.0/16"},
         {"name": "ib0", "address": "192.168.5.1", "subnet": "192.168.5.0/24"}]
    b = [{"name": "lo", "address": "127.0.0.1", "subnet": "127.0.0.0/8"},
         {"name": "ens5", "address": "10.1.9.9", "subnet": "10.1.0.0/16"}]
    results, subnet = checks.cluster_checks({"a": probe("a", interfaces=a), "b": probe("b", interfaces=b)}, [])
    assert subnet == "10.1.0.0/16"
    result = next(r for r in results if r.name == "shared subnet")
    assert (result.status, result.detail) == ("ok", "10.1.0.0/16 (a: eth0, b: ens5)")
    assert result.fix == "run with --network-interface 10.1.0.0/16"


def test_no_shared_subnet_and_same_hostname_are_flagged():
    a = [{"name": "eth0", "address": "10.0.0.1", "subnet": "10.0.0.0/24"}]
    b = [{"name": "eth0", "address": "10.0.1.1", "subnet": "10.0.1.0/24"}]
    found = by_name(checks.cluster_checks({"a": probe("x", interfaces=a), "b": probe("x", interfaces=b)}, [])[0])
    assert found["shared subnet"][0] == "fail"
    assert found["distinct hostnames"] == ("warn", "same hostname 'x' on a, b")


def test_pairwise_reachability_and_unreached_nodes():
    reach = {"b:22": {"ok": False, "error": "timed out"}}
    found = by_name(checks.cluster_checks(
        {"a": probe("a", reachability=reach), "b": probe("b", reachability={"a:22": {"ok": True}})}, ["c"])[0])
    assert found["pairwise tcp"] == ("fail", "1/2 pairs fail: a -> b:22")
    assert found["all nodes probed"] == ("fail", "not probed: c")


def test_slots_larger_than_gpus_warns_and_gpu_details():
    node = by_name(checks.node_checks(HostSpec("g1", 4, source="hosts.txt:1"),
                                      probe(gpus=[H100, H100], nccl="2.21.5")))
    assert node["slots"] == ("warn", "slots=4 but 2 GPU(s)")
    assert node["gpus"] == ("ok", "2 x NVIDIA H100 80GB HBM3 85.0 GiB")
    assert node["nccl"] == ("ok", "2.21.5")
    assert node["ulimit -l"][0] == "ok"  # unlimited
    assert by_name(checks.node_checks(HostSpec("g1", 2), probe(gpus=[H100, H100])))["slots"] == (
        "ok", "2 for 2 GPU(s)")


def test_node_problems_are_reported_with_fixes():
    bad = probe(asyncddp=None, shm_bytes=64 * 1024**2, on_path={"mpirun": None, "prted": None, "orted": None},
                torch={"error": "ModuleNotFoundError: No module named 'torch'"})
    results = {r.name: r for r in checks.node_checks(HostSpec("n", 1), bad)}
    assert results["asyncddp"].status == "fail" and "pip install asyncddp" in results["asyncddp"].fix
    assert results["torch"].status == "fail"
    assert results["/dev/shm"].detail == "64 MiB (small)"
    assert results["mpi on PATH"].detail == "mpirun, prted/orted not on the non-interactive PATH"
    assert by_name(checks.node_checks(HostSpec("n", 1), bad, local=True))["mpi on PATH"] == (
        "ok", "local: /usr/bin/mpirun")


def test_report_exit_codes_and_verdict():
    def report(*statuses):
        node = NodeReport("n", "", tuple(CheckResult(f"c{i}", s, "") for i, s in enumerate(statuses)))
        return DoctorReport((node,), elapsed_s=1.25)

    assert report("ok", "ok").exit_code == 0
    assert report("ok", "warn").exit_code == 1
    assert report("warn", "fail").exit_code == 2
    assert report("ok", "warn", "fail").verdict() == "NOT ready: 1 node(s), 3 checks, 1 ok, 1 warn, 1 fail in 1.2 s"


def test_probe_parsers():
    assert parse_mpirun_version("mpirun (Open MPI) 5.0.11\n\nReport bugs") == {
        "implementation": "Open MPI", "version": "5.0.11"}
    assert parse_mpirun_version("mpirun.openmpi (OpenRTE) 4.1.4\n") == {"implementation": "Open MPI", "version": "4.1.4"}
    assert parse_mpirun_version("HYDRA build details:\n    Version:    4.2.0\n") == {
        "implementation": "MPICH", "version": "4.2.0"}
    assert parse_ompi_cuda("mca:opal:base:param:opal_built_with_cuda_support:value:true\n") is True
    assert parse_ompi_cuda("mca:mpi:base:param:mpi_built_with_cuda_support:value:false") is False
    assert parse_ompi_cuda("nothing") is None


def test_probe_runs_without_asyncddp():
    """The probe must answer on a node without asyncddp: run it with the system Python, isolated."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no system python3 to run the probe without asyncddp")
    done = subprocess.run([system_python, "-I", "-", json.dumps({"peers": []})], input=PROBE_TEXT,
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["python"]["executable"] == system_python
    assert result["asyncddp"] is None  # not importable there, and the probe still answered
    found = {r.name: r.status for r in checks.node_checks(HostSpec("n", 1), result)}
    assert found["asyncddp"] == "fail"


def test_cli_localhost_json():
    done = subprocess.run([sys.executable, "-m", "asyncddp", "doctor", "--json"], capture_output=True,
                          text=True, timeout=120)
    report = json.loads(done.stdout)
    assert done.returncode == report["exit_code"]
    node = report["nodes"][0]
    assert node["host"] == "localhost" and node["checks"][0] == {
        "name": "ssh", "status": "ok", "detail": "local host, no SSH", "fix": ""}
    assert node["probe"]["python"]["executable"]  # the whole probe is in --json
    assert {c["name"] for c in node["checks"]} >= {"python", "torch", "mpi", "mpi4py", "/dev/shm"}


def test_inside_a_slurm_allocation_doctor_checks_its_nodes(monkeypatch):
    from asyncddp.cli.doctor import load_hosts

    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[01-02],gpu7")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x2),1")
    hosts, known_hosts = load_hosts(None, None, None)
    assert [(h.name, h.slots) for h in hosts] == [("node01", 2), ("node02", 2), ("gpu7", 1)]
    assert known_hosts is None
    # End to end on an allocation of this machine alone: probed locally, with the allocation's slots.
    env = {**os.environ, "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "3"}
    done = subprocess.run([sys.executable, "-m", "asyncddp", "doctor", "--json"], capture_output=True,
                          text=True, timeout=120, env=env)
    node = json.loads(done.stdout)["nodes"][0]
    assert node["host"] == "localhost"
    assert {c["name"]: c["detail"] for c in node["checks"]}["slots"] == "3"


def test_cli_rejects_two_host_sources(tmp_path):
    done = subprocess.run([sys.executable, "-m", "asyncddp", "doctor", "-H", "a:1", "--hostfile",
                           str(tmp_path / "h")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "asyncddp: error: give only one of --hostfile, -H, --config (got --hostfile and -H)"


def test_sigterm_ends_doctor_its_local_probe_and_its_private_dir(tmp_path):
    # A node's python that never answers (it records its pid first): doctor is waiting on it when
    # the signal comes.
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/pids\nexec sleep 60\n")
    python.chmod(0o755)
    config = tmp_path / "cluster.yaml"
    config.write_text(f"hosts:\n  - name: localhost\n    slots: 1\n    python: {python}\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    doctor = subprocess.Popen([sys.executable, "-m", "asyncddp", "doctor", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "TMPDIR": str(temp)})
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pids").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [entry.name[:16] for entry in temp.iterdir()] == ["asyncddp-doctor-"]
        doctor.send_signal(signal.SIGTERM)
        _, err = doctor.communicate(timeout=10)
    finally:
        if doctor.poll() is None:
            doctor.kill()
    assert doctor.returncode == 143 and err == "asyncddp: stopped by SIGTERM\n", err
    assert list(temp.iterdir()) == []
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert pids and not any(pid_is_running(pid) for pid in pids)
