"""Real OpenSSH servers for tests: generated keys, a private sshd_config, a known_hosts of our own.

``start_sshd(workdir)`` runs ``/usr/sbin/sshd -D`` on 127.0.0.1 with a free port (or on an address
inside a network namespace when ``prefix`` is ``["ip", "netns", "exec", ns, ...]``), accepting only a
freshly generated user key and logging to a file. Sessions get the test venv's ``bin`` first on
PATH (sshd's ``SetEnv``), like a node whose non-interactive PATH contains MPI. Callers stop it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asyncddp.launcher.hosts import HostSpec

SSHD = "/usr/sbin/sshd"
VENV_BIN = str(Path(sys.executable).parent)


def sshd_missing_reason() -> str | None:
    """Why no test sshd can run here, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install -y openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install -y openssh-client)"
    return None


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new passphrase-less key pair at ``path`` / ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "asyncddp-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def known_hosts_line(host: str, port: int, host_key: Path) -> str:
    name = host if port == 22 else f"[{host}]:{port}"
    kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
    return f"{name} {kind} {blob}\n"


@dataclass
class Sshd:
    """A running test sshd and the files a client needs to reach it."""

    process: subprocess.Popen
    host: str
    port: int
    host_key: Path
    user_key: Path
    known_hosts: Path
    log: Path

    def host_spec(self, slots: int = 1, **fields) -> HostSpec:
        values = dict(ssh_port=self.port, ssh_user=getpass.getuser(), identity_file=str(self.user_key),
                      python=sys.executable, source="test sshd")
        values.update(fields)
        return HostSpec(self.host, slots, **values)

    def write_known_hosts(self, path: Path | None = None, host_key: Path | None = None) -> Path:
        path = path or self.known_hosts
        path.write_text(known_hosts_line(self.host, self.port, host_key or self.host_key))
        return path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start_sshd(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    prefix: list[str] | None = None,
    user_key: Path | None = None,
    timeout: float = 15.0,
) -> Sshd:
    """Start sshd in the foreground of its own process group; returns once it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    port = port or free_port()
    host_key = keygen(workdir / "ssh_host_ed25519_key")
    user_key = user_key or keygen(workdir / "id_ed25519")
    log = workdir / "sshd.log"
    config = workdir / "sshd_config"
    config.write_text(
        f"ListenAddress {host}:{port}\n"
        f"HostKey {host_key}\n"
        f"PidFile {workdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {user_key}.pub\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"SetEnv PATH={VENV_BIN}:/usr/local/bin:/usr/bin:/bin\n"
        "LogLevel INFO\n"
    )
    argv = [*(prefix or []), SSHD, "-D", "-E", str(log), "-f", str(config)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    server = Sshd(process, host, port, host_key, user_key, workdir / "known_hosts", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "Server listening" in log.read_text():
            return server
        if process.poll() is not None:
            error = process.stderr.read().decode() + (log.read_text() if log.exists() else "")
            raise RuntimeError(f"sshd exited with {process.returncode}: {error.strip()}")
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"sshd did not listen on {host}:{port} within {timeout} s")
