"""Run doctor over a host list: one thread per host (SSH stages, then the probe), then cross-node checks.

``run_doctor`` returns a ``DoctorReport``; ``ssh_preflight`` runs only the SSH stages (no probe) and
returns one message per host a job could not reach, for ``asyncddp run`` to refuse early. Hosts
that mean this machine to mpirun (``localhost``, ``127.0.0.1``, this hostname; no SSH port or user
set) are probed in a local subprocess without SSH, as mpirun starts their ranks without SSH; the
launcher's ``launches_over_ssh`` decides this for doctor, the preflight and the launch plan alike.
Each node is probed with the host's configured Python, else with this interpreter's path: the one a
job launched from here would run, so a node where that path is missing fails with a clear line.
On this machine the probe is told what ``asyncddp run`` itself decides (``asyncddp.launcher.mpi``:
which mpirun, which library mpi4py loads), so doctor and run report the same MPI. A stop signal
(``asyncddp.launcher.stop_signals``) ends doctor at once: the local probes are killed and the
private directory they used is removed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from asyncddp.doctor import checks
from asyncddp.doctor.report import FAIL, OK, CheckResult, DoctorReport, NodeReport
from asyncddp.launcher import session_guard, stop_signals
from asyncddp.launcher.hosts import HostSpec, launches_over_ssh
from asyncddp.launcher.ssh import SshOptions, connect, parallel_hosts, run_remote, ssh_preflight
from asyncddp.launcher.validation import check_seconds

__all__ = ["DoctorOptions", "run_doctor", "ssh_preflight", "is_local", "PROBE_TEXT"]

PROBE_TEXT = (Path(__file__).parent / "probe.py").read_text()
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


@dataclass(frozen=True)
class DoctorOptions:
    """SSH settings plus how long the probe and each peer connection may take."""

    ssh: SshOptions = SshOptions()
    probe_timeout: float = 180.0
    peer_timeout: float = 3.0

    def __post_init__(self) -> None:
        check_seconds(self.probe_timeout, "--probe-timeout")
        check_seconds(self.peer_timeout, "peer_timeout")


def is_local(host: HostSpec) -> bool:
    """Probe without SSH exactly where a job starts ranks without SSH."""
    return not launches_over_ssh(host)


def _peers(host: HostSpec, hosts: list[HostSpec]) -> list[list]:
    # "localhost" or 127.0.0.1 means a different machine to every node, so it is never a target.
    return [[other.name, other.ssh_port or 22] for other in hosts
            if other is not host and other.name not in _LOOPBACK_NAMES and not _is_loopback(other.name)]


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _parse_probe(code: int | None, out: str, err: str, python: str) -> tuple[dict | None, CheckResult]:
    lines = out.strip().splitlines()
    if code == 0 and lines:
        try:
            return json.loads(lines[-1]), CheckResult("probe", OK, f"ran {python}")
        except ValueError:
            pass
    if code == 127:
        return None, CheckResult("probe", FAIL, f"{python!r} not found on the non-interactive PATH",
                                 "set the host's python: in the config to an absolute path")
    tail = (err.strip().splitlines() or lines or [f"exit {code}"])[-1]
    return None, CheckResult("probe", FAIL, f"{python} failed (exit {code}): {tail[:200]}",
                             "run the probe by hand: python3 - < asyncddp/doctor/probe.py")


def _launcher_view(python: str, private_dir: str) -> dict:
    """What ``asyncddp run`` decides about MPI on this machine (the same functions), for the probe:
    the mpirun, and how mpi4py loads its library or the one line saying why it cannot."""
    from asyncddp.errors import LaunchError
    from asyncddp.launcher.mpi import (MpiInstall, find_mpirun, library_env, mpi4py_library, mpi_version_text,
                                       parse_mpi_version, venv_prefix)

    try:
        mpirun = find_mpirun(python)
        flavor = parse_mpi_version(mpi_version_text(mpirun))
    except LaunchError:
        return {}  # no mpirun, or one asyncddp cannot drive: the probe's own checks say so
    view = {"mpirun": mpirun, "fault_tolerance": flavor.implementation.fault_tolerance}
    try:
        install = MpiInstall(mpirun, flavor, venv_prefix(mpirun), mpi4py_library(mpirun, flavor, python))
    except LaunchError as error:
        return {**view, "mpi4py_error": str(error)}
    env, links = library_env(install, private_dir, dict(os.environ))
    for path, target in links.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
    return {**view, "mpi4py_env": env}


def _probe_local(host: HostSpec, argument: str, timeout: float, private_dir: str) -> tuple[dict | None, CheckResult]:
    python = host.python or sys.executable
    argument = json.dumps({**json.loads(argument), **_launcher_view(python, tempfile.mkdtemp(dir=private_dir))})
    return _run_local_probe(python, argument, timeout)


def _run_local_probe(python: str, argument: str, timeout: float) -> tuple[dict | None, CheckResult]:
    try:
        done = subprocess.run([python, "-", argument], input=PROBE_TEXT, capture_output=True,
                              text=True, timeout=timeout, start_new_session=True)
    except FileNotFoundError:
        return _parse_probe(127, "", "", python)
    except subprocess.TimeoutExpired:
        return None, CheckResult("probe", FAIL, f"no answer within {timeout:g} s")
    return _parse_probe(done.returncode, done.stdout, done.stderr, python)


def _probe_remote(client, host: HostSpec, argument: str, timeout: float):
    # The interpreter a job would run there: the host's python: from the config, else the same
    # path as here (what the launcher starts on every node when none is configured).
    python = host.python or sys.executable
    try:
        code, out, err = run_remote(client, [python, "-", argument], PROBE_TEXT, timeout)
    except (socket.timeout, TimeoutError):
        return None, CheckResult("probe", FAIL, f"no answer within {timeout:g} s")
    except Exception as error:  # paramiko raises SSHException and friends mid-session
        return None, CheckResult("probe", FAIL, f"remote command failed: {error}")
    return _parse_probe(code, out, err, python)


def check_node(host: HostSpec, hosts: list[HostSpec], options: DoctorOptions, private_dir: str) -> NodeReport:
    """All stages and checks of one host (runs in its own thread); ``private_dir`` holds what the
    local probe needs on disk."""
    start = time.monotonic()
    argument = json.dumps({"peers": _peers(host, hosts), "connect_timeout": options.peer_timeout})
    if is_local(host):
        stages = [CheckResult("ssh", OK, "local host, no SSH")]
        probe, probe_check = _probe_local(host, argument, options.probe_timeout, private_dir)
    else:
        connection = connect(host, options.ssh)
        stages = connection.checks
        if not connection.ok:
            return NodeReport(host.name, host.source, tuple(stages), None, time.monotonic() - start)
        try:
            probe, probe_check = _probe_remote(connection.client, host, argument, options.probe_timeout)
        finally:
            connection.client.close()
    found = [*stages, probe_check] + (checks.node_checks(host, probe, is_local(host)) if probe else [])
    return NodeReport(host.name, host.source, tuple(found), probe, time.monotonic() - start)


def run_doctor(hosts: list[HostSpec] | None = None, options: DoctorOptions = DoctorOptions()) -> DoctorReport:
    """Check every host in parallel and compare them; default is localhost with one slot."""
    hosts = list(hosts) if hosts else [HostSpec("localhost", 1, source="default")]
    start = time.monotonic()
    before = set(session_guard.children(os.getpid()))

    def end_local_probes() -> None:
        # What doctor's threads started, never a child the calling program already had; a local
        # probe leads a session (and process group) of its own, with whatever it started.
        for pid in set(session_guard.children(os.getpid())) - before:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)

    with stop_signals.private_dir("asyncddp-doctor-") as private_dir:
        nodes = parallel_hosts(lambda host: check_node(host, hosts, options, private_dir), hosts, end_local_probes)
    probes = {node.host: node.probe for node in nodes if node.probe is not None}
    unreached = [node.host for node in nodes if node.probe is None]
    cluster, subnet = checks.cluster_checks(probes, unreached)
    return DoctorReport(tuple(nodes), tuple(cluster), subnet, time.monotonic() - start)
