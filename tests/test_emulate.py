"""Emulated clusters for real: namespaces, shaped links, mpirun across them, and nothing left after.

A 2-node job (2 ranks per node) and a 4-node job (one slow node) run asyncddp's ops across the
nodes and check where every rank is, exact results (flat and hierarchical), shared memory inside a node (no bytes on the
node's link), and that a 16 MB transfer between nodes runs at the configured rate ±25%. Then the
cluster must be gone: namespaces, /etc/netns files, the state directory, processes, and no link
ever appears in the root namespace. The same after the creating process is killed (SIGTERM,
SIGKILL) and after a run whose guard died too (the next run cleans it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from asyncddp.errors import LaunchError
from asyncddp.launcher import netns
from asyncddp.launcher.emulate import NETEM_MISSING, PREFIX, emulated_cluster
from asyncddp.launcher.emulate_spec import parse_emulate_spec
from tests.mpi_helpers import ROOT, mpi_env
from tests.netns import emulated_mpirun_argv

pytestmark = pytest.mark.timeout(120)

RANK_SCRIPT = textwrap.dedent("""
    import json, os, socket, time
    import numpy as np
    import torch
    from mpi4py import MPI
    import asyncddp as addp

    def tx_bytes():
        # ip netns exec mounts the namespace's own /sys: this is the node's eth0
        return int(open("/sys/class/net/eth0/statistics/tx_bytes").read())

    addp.init()
    r, n, world = addp.rank(), addp.size(), MPI.COMM_WORLD
    src, near, far = 0, int(os.environ["NEAR"]), int(os.environ["FAR"])
    x = torch.full((1 << 17,), float(r), dtype=torch.float64)
    members = [r] + [(r - 2 ** k) % n for k in range(n.bit_length()) if 2 ** k < n]
    exact = {
        "allreduce": torch.equal(addp.allreduce(x), torch.full_like(x, (n - 1) / 2)),
        "allreduce_sum": torch.equal(addp.allreduce(x, average=False), torch.full_like(x, n * (n - 1) / 2)),
        "neighbor_allreduce": torch.equal(addp.neighbor_allreduce(x), torch.full_like(x, sum(members) / len(members))),
    }
    # Machines are the emulated nodes (found by hostname): node m holds ranks m*k .. m*k+k-1.
    k, machines = addp.local_size(), addp.machine_size()
    means = [sum(range(m * k, m * k + k)) / k for m in range(machines)]
    me = addp.machine_rank()
    peers = [me] + [(me - 2 ** j) % machines for j in range(machines.bit_length()) if 2 ** j < machines]
    exact["hierarchical_neighbor_allreduce"] = torch.equal(
        addp.hierarchical_neighbor_allreduce(x), torch.full_like(x, sum(means[m] for m in peers) / len(peers)))
    payload, ack = np.ones(16 << 20, dtype=np.uint8), np.zeros(1, dtype=np.uint8)

    def transfer(dst):
        # rank 0 -> dst: warm the connection, then 16 MB and a one-byte answer; time and link bytes at rank 0
        world.Barrier()
        if r == src:
            world.Send(payload[:4096], dst); world.Recv(ack, dst)
            before, start = tx_bytes(), time.perf_counter()
            world.Send(payload, dst); world.Recv(ack, dst)
            return time.perf_counter() - start, tx_bytes() - before
        if r == dst:
            world.Recv(payload[:4096], src); world.Send(ack, src)
            world.Recv(payload, src); world.Send(ack, src)
        return None

    same_node = transfer(near) if near >= 0 else None
    other_node = transfer(far)
    print("RESULT", json.dumps({"rank": r, "host": socket.gethostname(), "machine_rank": addp.machine_rank(),
                                "machine_size": addp.machine_size(), "local_size": addp.local_size(),
                                "exact": exact, "same_node": same_node, "other_node": other_node}), flush=True)
    addp.shutdown()
""")


@pytest.fixture(scope="module", autouse=True)
def need_namespaces():
    reason = netns.netns_missing_reason()
    if reason:
        print(f"skipping the emulated-cluster tests: {reason}")
        pytest.skip(reason)


def _root_links() -> set[str]:
    """Links of the root namespace that have a name the emulation uses inside its namespaces.

    Only those: other programs on this machine may add and remove their own links meanwhile.
    """
    listed = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in listed.splitlines()}
    return {name for name in names if re.fullmatch(r"br0|eth0|p\d+", name)}


def _processes_with(marker: str, at_start: bool = False) -> list[int]:
    """Processes whose command line (NUL-separated) contains ``marker``, or starts with it."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = entry.joinpath("cmdline").read_bytes().decode(errors="replace")
            if cmdline.startswith(marker) if at_start else marker in cmdline:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _assert_gone(tag: str, marker: str, links: set[str], within: float = 0.0) -> None:
    deadline = time.monotonic() + within
    while (netns.tag_leftovers(tag) or _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert netns.tag_leftovers(tag) == []
    assert _processes_with(marker) == []
    assert _root_links() == links


def _run_job(spec_text: str, near: int, far: int, tmp_path: Path) -> tuple[list[dict], str]:
    script = tmp_path / "emulated_rank.py"
    script.write_text(RANK_SCRIPT)
    with emulated_cluster(parse_emulate_spec(spec_text)) as cluster:
        done = subprocess.run(emulated_mpirun_argv(cluster, [sys.executable, str(script)]),
                              # The nodes share this machine's few cores: waiting ranks must
                              # yield them to the ones moving data, or the CPU, not the link, sets the rate.
                              env=mpi_env({"NEAR": str(near), "FAR": str(far), "OMPI_MCA_mpi_yield_when_idle": "1"}),
                              cwd=ROOT,
                              capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        tag = cluster.tag
        assert netns.tag_leftovers(tag)  # the cluster exists while in use
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = sorted((json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines()
                      if line.startswith("RESULT ")), key=lambda item: item["rank"])
    return results, tag


def _check_rate(seconds: float, link_bytes: int, rate_bps: int) -> None:
    measured = (16 << 20) * 8 / seconds
    print(f"16 MB between nodes: {measured / 1e6:.0f} Mbit/s on a {rate_bps / 1e6:.0f} Mbit/s link")
    assert 0.75 * rate_bps <= measured <= 1.25 * rate_bps, (measured, rate_bps)
    assert link_bytes >= 16 << 20  # it crossed the node's shaped eth0


def test_two_nodes_two_ranks_each(tmp_path):
    links = _root_links()
    results, tag = _run_job("nodes=2,ranks_per_node=2,bandwidth=300mbit", near=1, far=2, tmp_path=tmp_path)
    assert [(r["rank"], r["host"], r["machine_rank"], r["machine_size"], r["local_size"]) for r in results] == [
        (0, "emu0", 0, 2, 2), (1, "emu0", 0, 2, 2), (2, "emu1", 1, 2, 2), (3, "emu1", 1, 2, 2)]
    assert all(all(r["exact"].values()) for r in results), [r["exact"] for r in results]
    seconds, link_bytes = results[0]["same_node"]
    assert link_bytes < 1 << 20, link_bytes  # ranks of one node talk through shared memory
    _check_rate(*results[0]["other_node"], 300 * 10**6)
    _assert_gone(tag, str(tmp_path / "emulated_rank.py"), links)


def test_four_nodes_with_a_slow_one(tmp_path):
    links = _root_links()
    results, tag = _run_job("nodes=4,bandwidth=1gbit,slow_node=3:200mbit", near=-1, far=3, tmp_path=tmp_path)
    assert [(r["host"], r["machine_rank"], r["machine_size"], r["local_size"]) for r in results] == [
        (f"emu{i}", i, 4, 1) for i in range(4)]
    assert all(all(r["exact"].values()) for r in results), [r["exact"] for r in results]
    _check_rate(*results[0]["other_node"], 200 * 10**6)  # the slow node's link is the bottleneck
    _assert_gone(tag, str(tmp_path / "emulated_rank.py"), links)


KILLED_PARENT = textwrap.dedent("""
    import subprocess, sys
    from asyncddp.launcher.emulate import emulated_cluster
    from asyncddp.launcher.emulate_spec import parse_emulate_spec
    from tests.mpi_helpers import mpi_env
    from tests.netns import emulated_mpirun_argv

    with emulated_cluster(parse_emulate_spec("nodes=2,bandwidth=1gbit")) as cluster:
        job = subprocess.Popen(emulated_mpirun_argv(cluster, ["sleep", sys.argv[1]]), env=mpi_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(cluster.tag, flush=True)
        job.wait()
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_parent_leaves_nothing(sig, tmp_path):
    links = _root_links()
    marker = f"{600 + os.getpid() % 1000}.{sig.value}"  # a sleep only this test runs
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, marker], cwd=ROOT, env=mpi_env(),
                              stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    tag = parent.stdout.readline().strip()
    try:
        assert tag.startswith(f"{PREFIX}-{parent.pid}-"), tag
        deadline = time.monotonic() + 60
        while len(_processes_with(f"sleep\0{marker}", at_start=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_processes_with(f"sleep\0{marker}", at_start=True)) == 2  # one rank on each node
        parent.send_signal(sig)
        parent.wait(30)
        # SIGTERM: the parent removes everything itself; SIGKILL: its guard does, within seconds.
        _assert_gone(tag, f"sleep\0{marker}", links, within=20)
    finally:
        if parent.poll() is None:
            parent.kill()
        if tag.startswith(f"{PREFIX}-{parent.pid}-"):
            netns.remove_tag(tag)


STALE_RUN = textwrap.dedent("""
    from asyncddp.launcher import emulate, netns
    from asyncddp.launcher.emulate_spec import parse_emulate_spec
    cluster = emulate.plan_cluster(parse_emulate_spec("nodes=2,bandwidth=1gbit"), netns.new_tag(emulate.PREFIX))
    netns.write_owner(cluster.tag)
    emulate.build_cluster(cluster)
    print(cluster.tag, flush=True)
""")


def test_next_run_removes_what_a_dead_run_left():
    """A creator killed together with its guard: its namespaces stay until the next run."""
    links = _root_links()
    done = subprocess.run([sys.executable, "-c", STALE_RUN], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    tag = done.stdout.strip()
    assert sorted(netns.tag_leftovers(tag)) == sorted(
        [f"namespace {tag}-{name}" for name in ("n0", "n1", "sw")]
        + [f"/etc/netns/{tag}-n0", f"/etc/netns/{tag}-n1", f"/run/asyncddp-netns/{tag}"])
    assert tag in netns.stale_tags(PREFIX)
    with emulated_cluster(parse_emulate_spec("nodes=1")) as cluster:
        assert netns.tag_leftovers(tag) == []
        assert cluster.tag not in netns.stale_tags(PREFIX)  # a live run is never stale
    _assert_gone(tag, tag, links)


def test_latency_needs_netem(tmp_path):
    """latency= works where the kernel has netem, and fails in one line (leaving nothing) where not."""
    links = _root_links()
    config = Path("/proc/config.gz")
    try:
        with emulated_cluster(parse_emulate_spec("nodes=2,latency=20ms")) as cluster:
            ping = subprocess.run([*cluster.launch_prefix(0), "ping", "-c", "3", "-i", "0.2", "-q",
                                   cluster.nodes[1].address], capture_output=True, text=True, timeout=30)
            tag = cluster.tag
    except LaunchError as error:
        assert str(error) == NETEM_MISSING
        if config.exists():
            import gzip

            assert "CONFIG_NET_SCH_NETEM=" not in gzip.decompress(config.read_bytes()).decode()
        assert _root_links() == links
        assert not [name for name in netns.list_namespaces() if name.startswith(f"{PREFIX}-{os.getpid()}-")]
        return
    assert ping.returncode == 0, ping.stdout + ping.stderr
    average_ms = float(ping.stdout.rsplit("=", 1)[1].split("/")[1])
    assert 40 <= average_ms <= 60, ping.stdout  # 20 ms each way
    _assert_gone(tag, tag, links)
