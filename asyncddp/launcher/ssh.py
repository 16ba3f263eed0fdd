"""SSH to one host in explicit stages: DNS → TCP port → host key → authentication → remote command.

Each stage has its own timeout and its own ``CheckResult`` so that a failure says exactly where it
happened (a name that does not resolve, a port nobody listens on, a host key that changed, a key the
server refuses). Host keys are verified against known_hosts before any credential is offered, which
is why the host key stage comes before authentication. Unknown keys are refused unless the caller
asked to accept new keys (then they are appended to known_hosts); a changed key is always refused.
Identity files and passwords never appear in any result.

``ssh_preflight`` runs these stages on every remote host before ``asyncddp run`` starts mpirun;
``asyncddp doctor`` runs them before its probe.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from asyncddp.errors import ConfigError
from asyncddp.launcher import stop_signals
from asyncddp.launcher.check_result import FAIL, OK, CheckResult
from asyncddp.launcher.hosts import HostSpec, launches_over_ssh
from asyncddp.launcher.input_files import MAX_INPUT_BYTES
from asyncddp.launcher.validation import check_seconds

__all__ = ["SshOptions", "Connection", "connect", "fingerprint", "run_remote", "parallel_hosts", "ssh_preflight"]

_known_hosts_lock = threading.Lock()

# paramiko logs each failed handshake as an ERROR with its traceback from the transport's thread;
# with no logging set up, Python prints those on stderr (thousands of lines for a few hundred
# hosts). Every stage's outcome is already one result line here: paramiko's own log stays quiet
# unless the program configures logging itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class SshOptions:
    """How doctor connects: known_hosts file (None = ~/.ssh/known_hosts), per-stage timeout."""

    known_hosts: str | None = None
    accept_new_host_keys: bool = False
    timeout: float = 10.0

    def __post_init__(self) -> None:
        # inf or nan would reach socket and thread timeouts, which overflow or never expire.
        check_seconds(self.timeout, "--timeout")
        if self.known_hosts is not None:
            _check_known_hosts(self.known_hosts_path)

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts or "~/.ssh/known_hosts").expanduser()


@dataclass
class Connection:
    """The stage results so far and, when every stage passed, the connected client."""

    checks: list[CheckResult]
    client: paramiko.SSHClient | None = None

    @property
    def ok(self) -> bool:
        return self.client is not None


def _check_known_hosts(path: Path) -> None:
    """A known_hosts file that exists must be a regular file of sane size: paramiko reads a folder
    with a traceback and ``/dev/zero`` forever."""
    if not path.exists():
        return  # created when a new key is accepted
    if not path.is_file():
        raise ConfigError(f"known_hosts {path} is not a regular file; give a known_hosts file (or a new path)")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise ConfigError(f"known_hosts {path} is larger than {MAX_INPUT_BYTES >> 20} MiB; check the path")


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:<base64>`` exactly as OpenSSH prints it (no padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__("unknown host key")
        self.key = key


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown keys (recording which), or accept and append them to known_hosts."""

    def __init__(self, options: SshOptions) -> None:
        self.options = options
        self.accepted: paramiko.PKey | None = None

    def missing_host_key(self, client, hostname, key) -> None:
        if not self.options.accept_new_host_keys:
            raise _UnknownHostKey(key)
        path = self.options.known_hosts_path
        line = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        with _known_hosts_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as handle:
                handle.write(line)
        self.accepted = key


def _resolve(name: str, port: int, timeout: float) -> list:
    """getaddrinfo has no timeout of its own: run it in a daemon thread and stop waiting."""
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as error:
            box["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def _tcp(addresses: list, timeout: float) -> socket.socket:
    last: Exception | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except OSError as error:
            sock.close()
            last = error
    raise last or OSError("no address")


def connect(host: HostSpec, options: SshOptions) -> Connection:
    """Run the SSH stages for ``host``; stops at the first failing stage."""
    port = host.ssh_port or 22
    user = host.ssh_user or getpass.getuser()
    where = f"{host.name}:{port}"
    done = Connection(checks=[])
    try:
        addresses = _resolve(host.name, port, options.timeout)
    except (OSError, TimeoutError) as error:
        done.checks.append(CheckResult(
            "dns", FAIL, f"cannot resolve {host.name!r}: {error}",
            f"fix the name in {host.source or 'the host list'} or add it to DNS / /etc/hosts"))
        return done
    shown = ", ".join(sorted({a[4][0] for a in addresses}))
    done.checks.append(CheckResult("dns", OK, f"{host.name} -> {shown}"))
    try:
        sock = _tcp(addresses, options.timeout)
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        done.checks.append(CheckResult(
            "tcp", FAIL, f"cannot connect to {where}: {reason} (timeout {options.timeout:g} s)",
            "start sshd there, check the ssh port (hostfile/config ssh port) and firewalls"))
        return done
    done.checks.append(CheckResult("tcp", OK, f"port {port} open"))
    if host.identity_file and not os.access(host.identity_file, os.R_OK):
        sock.close()
        # The key's path is not shown: messages never name identity files.
        done.checks.append(CheckResult(
            "auth", FAIL, f"the identity_file set for {host.name} ({host.source}) is missing or unreadable",
            "fix identity_file in the config"))
        return done
    _handshake(host, user, port, sock, options, done)
    return done


def _handshake(host, user, port, sock, options: SshOptions, done: Connection) -> None:
    client = paramiko.SSHClient()
    path = options.known_hosts_path
    try:
        if options.known_hosts is None:
            client.load_system_host_keys()  # also reads ~/.ssh/known_hosts
        elif path.exists():
            client.load_host_keys(str(path))
    except (OSError, UnicodeDecodeError) as error:
        sock.close()
        done.checks.append(CheckResult("host key", FAIL, f"cannot read known_hosts {path}: {error}",
                                       "make the file readable UTF-8 text, or point --known-hosts at another one"))
        return
    policy = _HostKeyPolicy(options)
    client.set_missing_host_key_policy(policy)
    name = _known_hosts_name(host.name, port)
    key = Path(host.identity_file) if host.identity_file else None
    if key is not None and key.exists() and (not key.is_file() or key.stat().st_size > MAX_INPUT_BYTES):
        # paramiko would read a device such as /dev/zero forever looking for the key's first line.
        sock.close()
        done.checks.append(CheckResult("auth", FAIL, "the identity_file is not a regular key file",
                                       "point identity_file at a private key file"))
        return
    try:
        client.connect(
            host.name, port=port, username=user, sock=sock,
            key_filename=host.identity_file, look_for_keys=host.identity_file is None,
            allow_agent=True, timeout=options.timeout, banner_timeout=options.timeout,
            auth_timeout=options.timeout,
        )
    except _UnknownHostKey as error:
        client.close()
        sock.close()
        done.checks.append(CheckResult(
            "host key", FAIL,
            f"UNKNOWN host key for {name}: {error.key.get_name()} {fingerprint(error.key)} "
            f"(not in {path})",
            "check the fingerprint with the host's admin, then rerun with --accept-new-host-keys"))
        return
    except paramiko.BadHostKeyException as error:
        client.close()
        sock.close()
        done.checks.append(CheckResult(
            "host key", FAIL,
            f"CHANGED host key for {name}: server offers {error.key.get_name()} "
            f"{fingerprint(error.key)}, known_hosts has {fingerprint(error.expected_key)}",
            f"possible man-in-the-middle; if the host was reinstalled, remove its line from {path} "
            "(ssh-keygen -R)"))
        return
    except paramiko.AuthenticationException as error:
        done.checks.append(_host_key_ok(client, policy, name, path))
        client.close()
        sock.close()
        done.checks.append(CheckResult(
            "auth", FAIL, f"{user}@{host.name} refused: {error}",
            "set ssh user / identity_file in the config, or add your public key to the host's "
            "authorized_keys"))
        return
    except (paramiko.SSHException, OSError, EOFError) as error:
        reason = _handshake_failure(client, error, options.timeout)
        client.close()
        sock.close()
        done.checks.append(CheckResult(
            "ssh", FAIL, f"SSH handshake with {name} failed: {reason}",
            "check that an SSH server (not another service) listens on that port"))
        return
    done.checks.append(_host_key_ok(client, policy, name, path))
    done.checks.append(CheckResult("auth", OK, f"{user}@{host.name}, public key"))
    done.client = client


def _handshake_failure(client: paramiko.SSHClient, error: BaseException, timeout: float) -> str:
    """What went wrong in a handshake, from the transport rather than from ``error``: when the
    server never sends its banner, paramiko's connect gives up at the same moment and fails later
    with the unrelated "No existing session"."""
    transport = client.get_transport()
    if transport is not None and not transport.remote_version:
        return (f"no SSH banner within {timeout:g} s: the port accepts connections but sends nothing "
                "(not an SSH server, or one too busy to answer)")
    saved = transport.get_exception() if transport is not None else None
    return str(saved or error) or type(saved or error).__name__


def _host_key_ok(client, policy, name, path) -> CheckResult:
    transport = client.get_transport()
    key = transport.get_remote_server_key() if transport else None
    shown = f"{key.get_name()} {fingerprint(key)}" if key else "verified"
    if policy.accepted is not None:
        return CheckResult("host key", OK, f"NEW key {shown} accepted and added to {path}")
    return CheckResult("host key", OK, f"known ({shown})")


def run_remote(client: paramiko.SSHClient, argv: list[str], stdin_text: str, timeout: float):
    """Run ``argv`` (quoted) on the host, feed it ``stdin_text``; (exit code, stdout, stderr)."""
    _, stdout, stderr = client.exec_command(shlex.join(argv), timeout=timeout)
    channel = stdout.channel
    channel.sendall(stdin_text.encode())
    channel.shutdown_write()
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return channel.recv_exit_status(), out, err


def parallel_hosts(function, hosts: list[HostSpec], on_stop: Callable[[], None] | None = None) -> list:
    """``function`` of each host, each in a thread of its own; the first error raised is raised.

    Daemon threads, waited for from the main thread in short waits: a stop signal raised there
    (``stop_signals.Stopped``) ends doctor at once, where an executor would wait for every probe
    first. ``on_stop`` then runs until the threads are done (at most 5 s), so that nothing they
    start after a first cleanup outlives doctor."""
    results: list = [None] * len(hosts)
    errors: list[BaseException] = []
    # Events, not Thread.join: a signal that interrupts a join marks the thread as ended.
    finished = [threading.Event() for _ in hosts]

    def one(index: int) -> None:
        try:
            results[index] = function(hosts[index])
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)
        finally:
            finished[index].set()

    for index in range(len(hosts)):
        threading.Thread(target=one, args=(index,), name=f"doctor-{index}", daemon=True).start()
    try:
        for event in finished:
            while not event.wait(0.2):
                pass
    except stop_signals.Stopped:
        if on_stop is not None:
            with stop_signals.deferred():  # a second signal waits for the cleanup
                deadline = time.monotonic() + 5
                while not all(event.is_set() for event in finished) and time.monotonic() < deadline:
                    on_stop()
                    time.sleep(0.05)
        raise
    if errors:
        raise errors[0]
    return results


def ssh_preflight(
    hosts: list[HostSpec],
    *,
    known_hosts: str | None = None,
    timeout: float = 10.0,
    accept_new_host_keys: bool = False,
) -> list[str]:
    """SSH stages only, all hosts in parallel: one message per unreachable host (empty = all fine).

    Each message names the host, where it was declared, the failing stage and the fix, e.g.
    ``node2 (hosts.txt:2): tcp: cannot connect to node2:22: Connection refused ... -> start sshd ...``.
    """
    options = SshOptions(known_hosts, accept_new_host_keys, timeout)

    def one(host: HostSpec) -> str | None:
        if not launches_over_ssh(host):
            return None
        connection = connect(host, options)
        if connection.ok:
            connection.client.close()
            return None
        failed = next(check for check in connection.checks if check.status == FAIL)
        where = f" ({host.source})" if host.source else ""
        return f"{host.name}{where}: {failed.name}: {failed.detail} -> {failed.fix}"

    return [message for message in parallel_hosts(one, list(hosts)) if message]
