"""Unmodified torch.distributed scripts under the real ``asyncddp run``: torchrun's variables on every
rank, DDP's rendezvous (gloo) locally, over ``-H`` and across an emulated network, and both worlds
(torch.distributed and asyncddp) in one job."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from asyncddp.launcher import netns
from tests.cli import asyncddp
from tests.mpi_helpers import ROOT

pytestmark = pytest.mark.timeout(240)

EXAMPLE = ROOT / "examples" / "ddp_unchanged.py"
NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
         "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
         "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID")
# What each rank saw, then the example's own training (small: the variables and the rendezvous are tested).
REPORT = f"""import json, os, runpy, socket, sys
print("TORCHENV " + json.dumps({{name: os.environ.get(name) for name in {NAMES!r}}}), flush=True)
print("HOST", socket.gethostname(), flush=True)
sys.argv = [{str(EXAMPLE)!r}, "--steps", "2", "--warmup", "1", "--batch-size", "4", "--image-size", "32"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
TRAINED = re.compile(r"^\[(\d+)\] rank (\d+) of (\d+) \(local rank (\d+)\): .* parameter checksum (\S+)$", re.M)


def asyncddp_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return asyncddp("run", *args, cwd=cwd, timeout=200, env={"PYTHONPATH": str(ROOT)})


def check_job(done: subprocess.CompletedProcess, nodes: list[int], master_addr: str,
              master_port: str | None = None) -> None:
    """Every rank's variables match its place in ``nodes`` (ranks per node), the rendezvous worked and
    the replicas ended identical."""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = {int(m[1]): json.loads(m[2]) for m in re.finditer(r"^\[(\d+)\] TORCHENV (.*)$", done.stdout, re.M)}
    size = sum(nodes)
    expected = {}
    for node, count in enumerate(nodes):
        for local in range(count):
            rank = sum(nodes[:node]) + local
            expected[rank] = {"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(local),
                              "LOCAL_WORLD_SIZE": str(count), "GROUP_RANK": str(node),
                              "GROUP_WORLD_SIZE": str(len(nodes)), "ROLE_RANK": str(rank),
                              "ROLE_WORLD_SIZE": str(size), "ROLE_NAME": "default", "MASTER_ADDR": master_addr,
                              "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0"}
    assert {rank: {k: v for k, v in env.items() if k in expected[0]} for rank, env in seen.items()} == expected
    ports = {env["MASTER_PORT"] for env in seen.values()}
    runs = {env["TORCHELASTIC_RUN_ID"] for env in seen.values()}
    assert len(ports) == 1 and (master_port is None or ports == {master_port}) and 0 < int(ports.pop()) < 65536
    assert len(runs) == 1 and runs.pop().startswith("asyncddp-")
    trained = TRAINED.findall(done.stdout)
    assert sorted((int(tag), int(rank), int(world)) for tag, rank, world, _, _ in trained) == [
        (r, r, size) for r in range(size)], done.stdout
    assert len({checksum for *_, checksum in trained}) == 1, trained  # DDP kept the replicas identical


def test_a_plain_ddp_script_on_two_local_ranks(tmp_path):
    (tmp_path / "report.py").write_text(REPORT)
    check_job(asyncddp_run("-np", "2", str(tmp_path / "report.py")), [2], "127.0.0.1")


def test_three_ranks_on_a_host_list_as_a_module_and_the_users_master_port_wins(tmp_path):
    (tmp_path / "report_mod.py").write_text(REPORT)
    with socket.socket() as probe:
        probe.bind(("", 0))
        port = str(probe.getsockname()[1])
    done = asyncddp_run("-H", "localhost:3", "-x", f"MASTER_PORT={port}", "-m", "report_mod", cwd=tmp_path)
    check_job(done, [3], "127.0.0.1", master_port=port)


def test_four_ranks_rendezvous_across_an_emulated_network(tmp_path):
    reason = netns.netns_missing_reason()
    if reason:
        pytest.skip(reason)
    (tmp_path / "report.py").write_text(REPORT)
    done = asyncddp_run("--emulate", "nodes=2,ranks_per_node=2", "report.py", cwd=tmp_path)
    hosts = dict(re.findall(r"^\[(\d+)\] HOST (\S+)$", done.stdout, re.M))
    assert hosts == {"0": "emu0", "1": "emu0", "2": "emu1", "3": "emu1"}, done.stdout + done.stderr
    # MASTER_ADDR is node 0's address on the emulated network (10.232.X.1, X drawn per run), not loopback.
    master = re.search(r'"MASTER_ADDR": "([\d.]+)"', done.stdout)[1]
    assert re.fullmatch(r"10\.232\.\d+\.1", master), master
    check_job(done, [2, 2], master)


@pytest.mark.parametrize("order", ["torch-first", "asyncddp-first"])
def test_torch_distributed_and_asyncddp_in_one_job(order):
    done = asyncddp_run("-np", "2", "examples/ddp_to_neighbor.py", "--steps", "2", "--warmup", "1",
                        "--batch-size", "4", "--image-size", "32", "--init-order", order)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(TRAINED.findall(done.stdout)) == 2, done.stdout
    # Two ranks are each other's only neighbour: averaging makes them equal after every step.
    assert re.search(r"^\[0\] total: [\d.]+ img/s on 2 ranks; replicas' checksums within 0$", done.stdout, re.M)


def test_dry_run_shows_each_ranks_variables():
    done = asyncddp_run("-H", "localhost:2", "--master-port", "29511", "--dry-run", "--json", "examples/hello.py")
    plan = json.loads(done.stdout)
    assert plan["env"]["MASTER_PORT"] == "29511" and plan["env"]["MASTER_ADDR"] == "127.0.0.1"
    assert [(r["RANK"], r["LOCAL_RANK"], r["GROUP_RANK"]) for r in plan["torch_env"]] == [("0", "0", "0"), ("1", "1", "0")]
    text = asyncddp_run("-H", "localhost:2", "--dry-run", "examples/hello.py").stdout
    assert "torchrun's variables, set on each rank from its own MPI ranks" in text
    bad = asyncddp_run("-np", "2", "--master-port", "70000", "--dry-run", "--json", "examples/hello.py")
    assert bad.returncode != 0 and json.loads(bad.stdout)["error"].startswith("--master-port 70000: give a port")
