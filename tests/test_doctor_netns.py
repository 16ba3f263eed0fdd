"""A real two-host cluster (two network namespaces, an sshd each): doctor and run over SSH.

Both "hosts" are reached only through their namespace addresses (10.231.X.1/.2); the commands run
inside the first namespace under its own hostname, like a user logged in on node a.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.netns import asyncddp_argv, netns_cluster, netns_missing_reason
from tests.sshd import sshd_missing_reason

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = netns_missing_reason() or sshd_missing_reason()
    if reason:
        print(f"skipping the two-host cluster tests: {reason}")
        pytest.skip(reason)
    with netns_cluster(tmp_path_factory.mktemp("cluster")) as built:
        yield built


@pytest.fixture
def hostfile(cluster, tmp_path):
    return cluster.write_hostfile(tmp_path / "hosts.txt", slots=2)


def test_doctor_reports_both_nodes_and_the_shared_subnet(cluster, hostfile):
    done = cluster.in_node(0, asyncddp_argv("doctor", "--hostfile", str(hostfile), "--json"), timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert [node["host"] for node in report["nodes"]] == cluster.names
    a, b = report["nodes"]
    # Node a is this machine (mpirun starts its ranks without SSH); node b is reached over SSH.
    assert a["checks"][0] == {"name": "ssh", "status": "ok", "detail": "local host, no SSH", "fix": ""}
    assert [c["name"] for c in b["checks"][:5]] == ["dns", "tcp", "host key", "auth", "probe"]
    for node, name in zip(report["nodes"], cluster.names):
        assert node["probe"]["hostname"] == name  # each node runs under its own hostname
        assert all(check["status"] == "ok" for check in node["checks"]), node["checks"]
        assert len(node["probe"]["reachability"]) == 1  # tried the other node's sshd
    assert report["shared_subnet"] == cluster.subnet
    cross = {check["name"]: check for check in report["cluster"]}
    assert cross["pairwise tcp"]["detail"] == "2/2 directed pairs connect"
    assert cross["shared subnet"]["fix"] == f"run with --network-interface {cluster.subnet}"


def test_doctor_table_and_unknown_keys_then_accepted(cluster, hostfile, tmp_path):
    """From a "login node" (namespace a, another hostname) both nodes are reached over SSH."""
    known = tmp_path / "known_hosts"
    login = f"{cluster.names[0]}-login"
    refused = cluster.in_node(0, asyncddp_argv("doctor", "--hostfile", str(hostfile), "--known-hosts",
                                               str(known)), hostname=login, timeout=90)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout.count("UNKNOWN host key") == 2
    assert "rerun with --accept-new-host-keys" in refused.stdout
    assert "NOT ready: 2 node(s)" in refused.stdout
    assert not known.exists()

    accepted = cluster.in_node(0, asyncddp_argv("doctor", "--hostfile", str(hostfile), "--known-hosts",
                                                str(known), "--accept-new-host-keys"),
                               hostname=login, timeout=90)
    print(accepted.stdout)  # the table, for the record (pytest -s)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert accepted.stdout.count("NEW key ssh-ed25519") == 2  # rich may wrap the fingerprint
    assert "ready to launch: 2 node(s)" in accepted.stdout
    assert sorted(line.split()[0] for line in known.read_text().splitlines()) == sorted(cluster.names)


def test_run_launches_two_ranks_per_host_over_ssh(cluster, tmp_path):
    script = tmp_path / "machines.py"
    script.write_text(
        "import socket\nimport asyncddp as addp\naddp.init()\n"
        "print('RANK', addp.rank(), addp.machine_rank(), addp.machine_size(), socket.gethostname(),"
        " flush=True)\naddp.shutdown()\n"
    )
    # OpenSSH takes ~/.ssh from the passwd entry, not $HOME: the key and known_hosts of this
    # cluster reach mpirun's ssh through the config (run writes them into its ssh_config).
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "hosts:\n" + "".join(f"  - name: {name}\n    slots: 2\n" for name in cluster.names)
        + f"ssh:\n  user: root\n  identity_file: {cluster.identity_file}\n"
        f"  known_hosts: {cluster.known_hosts}\n"
    )
    private_dirs = set(Path(tempfile.gettempdir()).glob(f"asyncddp-{os.getuid()}-*"))
    done = cluster.in_node(0, asyncddp_argv("run", "-np", "4", "--config", str(config), str(script)),
                           timeout=100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The run's private ssh_config directory is gone with the job.
    assert set(Path(tempfile.gettempdir()).glob(f"asyncddp-{os.getuid()}-*")) == private_dirs
    # run tags each rank's lines: "[2] RANK 2 1 2 <host>"
    lines = sorted(line.split()[2:] for line in done.stdout.splitlines() if line.split()[1:2] == ["RANK"])
    a, b = cluster.names
    assert lines == [["0", "0", "2", a], ["1", "0", "2", a], ["2", "1", "2", b], ["3", "1", "2", b]]


def test_unreachable_address_fails_within_timeout(cluster):
    """An address on the cluster's subnet that nobody holds (ARP unanswered): TCP times out."""
    ghost = cluster.subnet.replace(".0/24", ".9")
    start = time.monotonic()
    done = cluster.in_node(0, asyncddp_argv("doctor", "-H", f"{ghost}:1", "--timeout", "1", "--json"),
                           timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stdout + done.stderr
    report = json.loads(done.stdout)
    tcp = report["nodes"][0]["checks"][-1]
    assert (tcp["name"], tcp["status"]) == ("tcp", "fail")
    assert tcp["detail"] == f"cannot connect to {ghost}:22: timed out (timeout 1 s)"
    assert elapsed < 8, elapsed  # 1 s stage timeout plus interpreter start-up
