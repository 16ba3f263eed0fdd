"""SSH to ports that accept a connection but never send a banner (a hung sshd, another service):
one line per host with the real reason, nothing from paramiko on stderr, a capped preflight line.
Real listeners on loopback addresses, 1 s stage timeouts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from asyncddp.launcher.prepare import preflight_failure

ROOT = Path(__file__).resolve().parent.parent
HOSTS = 4


@pytest.fixture
def silent_hosts():
    """(address, port) of ``HOSTS`` listeners on 127.0.0.2.. that accept and never send."""
    servers, accepted = [], []
    for index in range(HOSTS):
        server = socket.socket()
        server.bind((f"127.0.0.{index + 2}", 0))
        server.listen(16)
        servers.append(server)

    def accept(server: socket.socket) -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:  # closed at the end of the test
            pass

    for server in servers:
        threading.Thread(target=accept, args=(server,), daemon=True).start()
    yield [server.getsockname() for server in servers]
    for item in servers + accepted:
        item.close()


def test_doctor_names_the_missing_banner_once_per_host_and_prints_no_traceback(silent_hosts, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text("hosts:\n" + "".join(f"  - name: {host}\n    port: {port}\n" for host, port in silent_hosts))
    done = subprocess.run([sys.executable, "-m", "asyncddp", "doctor", "--json", "--timeout", "1", "--config",
                           str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == ""
    report = json.loads(done.stdout)
    for node, (host, port) in zip(report["nodes"], silent_hosts):
        failed = [check for check in node["checks"] if check["status"] == "fail"]
        assert [check["detail"] for check in failed] == [
            f"SSH handshake with [{host}]:{port} failed: no SSH banner within 1 s: the port accepts connections but "
            "sends nothing (not an SSH server, or one too busy to answer)"]


def test_the_preflight_in_process_names_the_banner_for_each_host(silent_hosts):
    from asyncddp.doctor import ssh_preflight
    from asyncddp.launcher.hosts import HostSpec

    hosts = [HostSpec(host, 1, ssh_port=port, source=f"h:{index}") for index, (host, port) in enumerate(silent_hosts)]
    problems = ssh_preflight(hosts, timeout=1)
    assert len(problems) == HOSTS
    assert all("no SSH banner within 1 s" in problem and "No existing session" not in problem for problem in problems)


def test_a_failed_preflight_is_one_capped_line():
    problems = [f"node{index} (h:{index}): tcp: cannot connect -> start sshd" for index in range(200)]
    line = preflight_failure(problems, 250)
    assert line == ("SSH preflight failed for 200 of 250 remote hosts, mpirun not started: "
                    "node0 (h:0): tcp: cannot connect -> start sshd; node1 (h:1): tcp: cannot connect -> start sshd; "
                    "node2 (h:2): tcp: cannot connect -> start sshd; and 197 more hosts "
                    "(details for every host: asyncddp doctor; skip the check: --no-preflight)")
    assert preflight_failure(problems[:1], 1).startswith("SSH preflight failed for 1 of 1 remote hosts, mpirun not "
                                                         "started: node0 (h:0)")


def test_sigterm_ends_run_while_its_preflight_waits_for_a_banner(silent_hosts):
    import signal
    import time

    host, port = silent_hosts[0]
    launcher = subprocess.Popen([sys.executable, "-m", "asyncddp", "run", "-np", "1", "-H", host, "-p", str(port),
                                 "examples/hello.py"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
    try:
        # Blocked in the preflight once the listener holds a connection from it (banner timeout: 10 s).
        while not _connected(host, port) and launcher.poll() is None:
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 143, err
    assert err == "asyncddp: stopped by SIGTERM\n" and out == ""


def _connected(host: str, port: int) -> bool:
    """Whether some process holds an established TCP connection to host:port (from /proc/net/tcp)."""
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(fields[2] == wanted and fields[3] == "01" for fields in (line.split() for line in table))
