"""A two-host cluster on one machine: two network namespaces, a veth pair, an sshd and a hostname each.

``netns_cluster(workdir)`` creates namespaces ``addp-<pid>-<n>-a`` / ``-b`` joined by a veth pair with
addresses 10.231.X.1/24 and 10.231.X.2/24 that exist only inside them, brings ``lo`` up in each,
gives each its own UTS hostname (``unshare --uts``; MPI groups ranks by hostname) resolvable through
``/etc/netns/<ns>/hosts`` (which ``ip netns exec`` mounts over /etc/hosts), and starts an sshd on
port 22 of each address. Everything it made is removed on exit, even after a failure: processes
inside the namespaces are killed by pid, then the namespaces (and with them the veth pair) and the
/etc/netns files are deleted. ``in_node(name, argv)`` runs a command "on" a node.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshd import Sshd, keygen, known_hosts_line, start_sshd

_counter = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def netns_missing_reason() -> str | None:
    """Why this machine cannot build the cluster (not root, no iproute2/unshare, no CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install -y iproute2 util-linux)"
    name = f"addp-{os.getpid()}-probe"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as error:
        return f"cannot create a network namespace: {error.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def uts_prefix(namespace: str, hostname: str) -> list[str]:
    """argv prefix running a command in ``namespace`` under its own hostname."""
    return ["ip", "netns", "exec", namespace, "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', hostname]


@dataclass
class NetnsCluster:
    """Two "hosts": names (also hostnames and hosts-file entries), addresses, sshds, client files."""

    namespaces: list[str]
    names: list[str]
    addresses: list[str]
    subnet: str
    home: Path
    identity_file: Path
    known_hosts: Path
    sshds: list[Sshd] = field(default_factory=list)

    def in_node(self, index: int, argv: list[str], hostname: str | None = None,
                **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` on node ``index`` (its namespace, its hostname unless ``hostname`` is given,
        e.g. a "login node" name that makes both nodes remote) with HOME holding our keys."""
        env = dict(os.environ, HOME=str(self.home), PYTHONUNBUFFERED="1", COLUMNS="160")
        env.update(kwargs.pop("env", {}))
        prefix = uts_prefix(self.namespaces[index], hostname or self.names[index])
        return subprocess.run(prefix + argv,
                              env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              **kwargs)

    def write_hostfile(self, path: Path, slots: int = 2) -> Path:
        path.write_text("".join(f"{name} slots={slots}\n" for name in self.names))
        return path


def _kill_namespace_processes(namespace: str) -> None:
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def netns_cluster(workdir: Path):
    """Build the two-node cluster; yields a ``NetnsCluster`` and tears everything down after."""
    serial = next(_counter)
    tag = f"addp-{os.getpid()}-{serial}"
    namespaces = [f"{tag}-a", f"{tag}-b"]
    veths = [f"av{os.getpid() % 100000}{serial % 100}{n}" for n in "ab"]  # at most 15 characters
    octet = 20 + (os.getpid() + serial) % 200
    addresses = [f"10.231.{octet}.1", f"10.231.{octet}.2"]
    home = workdir / "home"
    (home / ".ssh").mkdir(parents=True)
    cluster = NetnsCluster(namespaces, list(namespaces), addresses, f"10.231.{octet}.0/24", home,
                           home / ".ssh" / "id_ed25519", home / ".ssh" / "known_hosts")
    made: list[str] = []
    try:
        for namespace in namespaces:
            _ip("netns", "add", namespace)
            made.append(namespace)
            etc = Path("/etc/netns") / namespace
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(
                "127.0.0.1 localhost\n"
                + "".join(f"{a} {n}\n" for a, n in zip(addresses, cluster.names)))
        _ip("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])
        for namespace, veth, address in zip(namespaces, veths, addresses):
            _ip("link", "set", veth, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", veth)
            _ip("-n", namespace, "link", "set", veth, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        keygen(cluster.identity_file)
        for index, namespace in enumerate(namespaces):
            server = start_sshd(workdir / f"sshd-{index}", host=addresses[index], port=22,
                                prefix=uts_prefix(namespace, cluster.names[index]),
                                user_key=cluster.identity_file)
            cluster.sshds.append(server)
        cluster.known_hosts.write_text("".join(
            known_hosts_line(name, 22, server.host_key) for name, server in zip(cluster.names, cluster.sshds)))
        yield cluster
    finally:
        for server in cluster.sshds:
            with contextlib.suppress(Exception):
                server.stop()
        for namespace in made:
            _kill_namespace_processes(namespace)
        time.sleep(0.1)
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        subprocess.run(["ip", "link", "del", veths[0]], capture_output=True)  # if never moved


def asyncddp_argv(*args: str) -> list[str]:
    """The real CLI entry point, run by this interpreter (works without PATH)."""
    return [sys.executable, "-m", "asyncddp", *args]
