"""doctor against a real OpenSSH server on 127.0.0.1: every stage, host key policy, preflight."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncddp.doctor import DoctorOptions, SshOptions, run_doctor, ssh_preflight
from asyncddp.launcher.ssh import connect
from tests.cli import asyncddp
from tests.sshd import free_port, keygen, known_hosts_line, sshd_missing_reason, start_sshd

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    reason = sshd_missing_reason()
    if reason:
        print(f"skipping sshd tests: {reason}")
        pytest.skip(reason)
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


def openssh_fingerprint(host_key: Path) -> str:
    """What ``ssh-keygen -lf`` prints for the key: the format doctor must match exactly."""
    out = subprocess.run(["ssh-keygen", "-lf", f"{host_key}.pub"], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def stages(checks) -> dict[str, tuple[str, str]]:
    return {check.name: (check.status, check.detail) for check in checks}


def test_doctor_all_ok_over_ssh(sshd, tmp_path):
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    report = run_doctor([sshd.host_spec(slots=2)], DoctorOptions(SshOptions(str(known), timeout=5)))
    node = report.nodes[0]
    assert [c.name for c in node.checks[:5]] == ["dns", "tcp", "host key", "auth", "probe"]
    assert {c.name: c.status for c in node.checks if c.status != "ok"} == {}
    assert report.exit_code == 0 and report.status == "ok"
    assert f"known (ssh-ed25519 {openssh_fingerprint(sshd.host_key)})" == node.check("host key").detail
    probe = node.probe
    assert probe["python"]["executable"] == sshd.host_spec().python
    assert probe["on_path"]["mpirun"] and probe["on_path"]["prted"]
    assert "127.0.0.0/8" in {iface["subnet"] for iface in probe["interfaces"]}
    assert node.check("slots").detail == "2"
    text = json.dumps(report.to_dict())
    assert str(sshd.user_key) not in text  # identity files are never printed
    assert report.verdict().startswith("ready to launch: 1 node(s)")


def test_wrong_port_fails_fast_with_clear_line(sshd):
    host = sshd.host_spec(ssh_port=free_port())
    start = time.monotonic()
    report = run_doctor([host], DoctorOptions(SshOptions(str(sshd.known_hosts), timeout=2)))
    assert time.monotonic() - start < 3
    failed = report.nodes[0].checks[-1]
    assert (failed.name, failed.status) == ("tcp", "fail")
    assert f"cannot connect to 127.0.0.1:{host.ssh_port}: Connection refused" in failed.detail
    assert report.exit_code == 2


@pytest.fixture
def silent_ports():
    """Ports that accept TCP but never speak SSH (a hung daemon); closed after the test."""
    listeners = []
    for _ in range(2):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes handshakes; nobody ever reads or writes
        listeners.append(listener)
    yield [listener.getsockname()[1] for listener in listeners]
    for listener in listeners:
        listener.close()


def test_silent_server_fails_within_timeout(sshd, silent_ports):
    start = time.monotonic()
    done = connect(sshd.host_spec(ssh_port=silent_ports[0]), SshOptions(timeout=1))
    elapsed = time.monotonic() - start
    assert elapsed < 3, elapsed
    assert (done.checks[-1].name, done.checks[-1].status) == ("ssh", "fail")
    assert "SSH handshake with [127.0.0.1]:" in done.checks[-1].detail


def test_hosts_are_checked_in_parallel(sshd, silent_ports):
    hosts = [sshd.host_spec(ssh_port=port, source=f"hosts.txt:{i}") for i, port in enumerate(silent_ports, 1)]
    start = time.monotonic()
    messages = ssh_preflight(hosts, timeout=1.5)
    elapsed = time.monotonic() - start
    assert elapsed < 2.9, f"two 1.5 s timeouts took {elapsed:.1f} s: not in parallel"
    assert [m.split(":")[0] for m in messages] == ["127.0.0.1 (hosts.txt"] * 2


def test_unresolvable_name_fails_at_dns(sshd):
    done = connect(sshd.host_spec().__class__("no-such-node.invalid", 1), SshOptions(timeout=3))
    assert [(c.name, c.status) for c in done.checks] == [("dns", "fail")]
    assert "cannot resolve 'no-such-node.invalid'" in done.checks[0].detail


def test_unknown_host_key_refused_then_accepted(sshd, tmp_path):
    known = tmp_path / "known_hosts"  # does not exist yet
    fingerprint = openssh_fingerprint(sshd.host_key)
    refused = connect(sshd.host_spec(), SshOptions(str(known), timeout=5))
    status, detail = stages(refused.checks)["host key"]
    assert status == "fail" and not refused.ok
    assert f"UNKNOWN host key for [127.0.0.1]:{sshd.port}: ssh-ed25519 {fingerprint}" in detail
    assert "--accept-new-host-keys" in refused.checks[-1].fix
    assert not known.exists()

    accepted = connect(sshd.host_spec(), SshOptions(str(known), accept_new_host_keys=True, timeout=5))
    accepted.client.close()
    assert stages(accepted.checks)["host key"][1].startswith(f"NEW key ssh-ed25519 {fingerprint} accepted")
    assert known.read_text() == known_hosts_line("127.0.0.1", sshd.port, sshd.host_key)

    again = connect(sshd.host_spec(), SshOptions(str(known), timeout=5))  # now known, no flag
    again.client.close()
    assert stages(again.checks)["host key"] == ("ok", f"known (ssh-ed25519 {fingerprint})")


def test_changed_host_key_always_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other_host_key")
    known = sshd.write_known_hosts(tmp_path / "known_hosts", host_key=other)
    for accept in (False, True):
        done = connect(sshd.host_spec(), SshOptions(str(known), accept_new_host_keys=accept, timeout=5))
        status, detail = stages(done.checks)["host key"]
        assert status == "fail" and not done.ok
        assert f"CHANGED host key for [127.0.0.1]:{sshd.port}" in detail
        assert openssh_fingerprint(sshd.host_key) in detail and openssh_fingerprint(other) in detail
    assert known.read_text() == known_hosts_line("127.0.0.1", sshd.port, other)  # untouched


def test_wrong_identity_fails_at_auth(sshd, tmp_path):
    stranger = keygen(tmp_path / "stranger")
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    done = connect(sshd.host_spec(identity_file=str(stranger)), SshOptions(str(known), timeout=5))
    assert [(c.name, c.status) for c in done.checks] == [
        ("dns", "ok"), ("tcp", "ok"), ("host key", "ok"), ("auth", "fail")]
    assert done.checks[2].detail == f"known (ssh-ed25519 {openssh_fingerprint(sshd.host_key)})"
    assert str(stranger) not in " ".join(c.detail + c.fix for c in done.checks)
    missing = connect(sshd.host_spec(identity_file=str(tmp_path / "nope")), SshOptions(str(known), timeout=5))
    assert [(c.name, c.status) for c in missing.checks][-1] == ("auth", "fail")
    assert "nope" not in missing.checks[-1].detail


def test_ssh_preflight_names_unreachable_hosts(sshd, tmp_path):
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    good = sshd.host_spec()
    bad = sshd.host_spec(ssh_port=free_port(), source="hosts.txt:2")
    assert ssh_preflight([good], known_hosts=str(known), timeout=5) == []
    messages = ssh_preflight([good, bad], known_hosts=str(known), timeout=5)
    assert len(messages) == 1
    assert messages[0].startswith(f"127.0.0.1 (hosts.txt:2): tcp: cannot connect to 127.0.0.1:{bad.ssh_port}")


def write_config(path: Path, sshd, known: Path, port: int | None = None) -> Path:
    path.write_text(
        "hosts:\n"
        f"  - name: 127.0.0.1\n    slots: 2\n    port: {port or sshd.port}\n"
        f"ssh:\n  user: {getpass.getuser()}\n  identity_file: {sshd.user_key}\n  known_hosts: {known}\n"
        f"python: {sys.executable}\n"
    )
    return path


def doctor_cli(*args: str) -> subprocess.CompletedProcess:
    return asyncddp("doctor", *args, timeout=90, env={"COLUMNS": "200"})


def test_cli_config_all_ok_then_changed_key(sshd, tmp_path):
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    config = write_config(tmp_path / "cluster.yaml", sshd, known)
    done = doctor_cli("--config", str(config), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "ok" and report["counts"]["fail"] == 0
    assert report["nodes"][0]["source"].startswith(f"{config}:")
    assert str(sshd.user_key) not in done.stdout  # the identity file is never printed

    sshd.write_known_hosts(known, host_key=keygen(tmp_path / "old_host_key"))
    changed = doctor_cli("--config", str(config), "--accept-new-host-keys")
    assert changed.returncode == 2
    assert "CHANGED host key for [127.0.0.1]:" in changed.stdout
    assert "NOT ready: 1 node(s)" in changed.stdout


def test_cli_wrong_port_one_clear_line(sshd, tmp_path):
    config = write_config(tmp_path / "cluster.yaml", sshd, sshd.write_known_hosts(tmp_path / "kh"), free_port())
    done = doctor_cli("--config", str(config), "--timeout", "2")
    assert done.returncode == 2
    assert "FAIL cannot connect to 127.0.0.1:" in done.stdout and "Connection refused" in done.stdout


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return asyncddp("run", *args, timeout=90)


def test_loopback_host_with_its_own_port_runs_over_ssh_as_preflight_checks(sshd, tmp_path):
    """127.0.0.1 with a port: is the sshd there, for doctor, the preflight and mpirun alike."""
    config = write_config(tmp_path / "cluster.yaml", sshd, sshd.write_known_hosts(tmp_path / "kh"))
    alias = f"asyncddp-127-0-0-1-port{sshd.port}.invalid"
    plan = json.loads(run_cli("--dry-run", "--json", "--config", str(config), "examples/hello.py").stdout)
    assert plan["argv"][plan["argv"].index("--host") + 1] == f"{alias}:2"
    (ssh_config,) = plan["files"].values()
    assert f"Host {alias}\n    HostName 127.0.0.1\n    User {getpass.getuser()}\n    Port {sshd.port}\n" in ssh_config

    code = "import os; print(os.environ.get('SSH_CONNECTION', 'no ssh').split()[-1])"
    done = run_cli("--config", str(config), sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    # Each rank's parent daemon was started by this sshd: its SSH_CONNECTION ends in the sshd's port.
    assert sorted(done.stdout.splitlines()) == [f"[0] {sshd.port}", f"[1] {sshd.port}"]

    refused = run_cli("--config", str(write_config(tmp_path / "bad.yaml", sshd, tmp_path / "kh", free_port())),
                      "examples/hello.py")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("asyncddp: error: SSH preflight failed for 1 of 1 remote hosts, mpirun not started: 127.0.0.1 (")


def test_unreadable_known_hosts_is_a_failed_check_not_a_traceback(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_bytes(b"\xff\xfe not text\n")
    done = connect(sshd.host_spec(), SshOptions(str(known), timeout=5))
    assert not done.ok
    assert [(c.name, c.status) for c in done.checks] == [("dns", "ok"), ("tcp", "ok"), ("host key", "fail")]
    assert done.checks[-1].detail.startswith(f"cannot read known_hosts {known}: 'utf-8' codec can't decode")


def test_identity_file_that_is_a_device_fails_at_auth_at_once(sshd, tmp_path):
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    started = time.monotonic()
    done = connect(sshd.host_spec(identity_file="/dev/zero"), SshOptions(str(known), timeout=5))
    assert time.monotonic() - started < 5
    assert [(c.name, c.status) for c in done.checks] == [("dns", "ok"), ("tcp", "ok"), ("auth", "fail")]
    assert done.checks[-1].detail == "the identity_file is not a regular key file"
