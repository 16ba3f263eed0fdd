"""Network namespaces as "machines" on one box: create, enter, and remove them without leftovers.

Each emulated node is a network namespace (``ip netns``) entered together with a UTS namespace of
its own, so that programs inside see their own hostname (MPI groups ranks into nodes by it) and,
through ``/etc/netns/<ns>/hosts`` that ``ip netns exec`` mounts over ``/etc/hosts``, resolve every
node's name. Everything a run makes carries its tag ``<prefix>-<pid>-<serial>``: the namespaces
``<tag>-*``, the files ``/etc/netns/<tag>-*`` and a state directory ``/run/asyncddp-netns/<tag>``
recording the creator's pid and start time. ``remove_tag`` deletes all of it (killing processes
still inside first), whoever calls it; ``remove_stale`` does so for tags whose creator is dead, so a
run killed with SIGKILL is cleaned up by the next one. Commands never go through a shell.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from asyncddp.errors import LaunchError
from asyncddp.launcher.session_guard import close_guard

__all__ = ["STATE_ROOT", "NETNS_ETC", "netns_missing_reason", "require_netns", "run_tool", "new_tag",
           "tag_pattern", "write_owner", "uts_prefix", "namespace_pids", "kill_namespace_processes",
           "remove_tag", "stale_tags", "remove_stale", "list_namespaces", "tag_leftovers", "check_name",
           "start_guard", "stop_guard"]

STATE_ROOT = Path("/run/asyncddp-netns")
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")  # a namespace, hostname or tag we create
_serial = itertools.count()
_KILL_WAIT_S = 3.0
# Sets this process's hostname in a fresh UTS namespace, then execs the rest: the hostname arrives
# as $0 and the command as "$@", never inside the script text.
_SET_HOSTNAME = 'printf %s "$0" > /proc/sys/kernel/hostname && exec "$@"'


def netns_missing_reason(tools: tuple[str, ...] = ("ip", "tc", "unshare")) -> str | None:
    """Why this machine cannot build namespaces (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root: rerun as root (sudo) or in a container with CAP_SYS_ADMIN"
    for tool in tools:
        if shutil.which(tool) is None:
            package = "util-linux" if tool == "unshare" else "iproute2"
            return f"'{tool}' is not installed: apt-get install -y {package} (or your distribution's {package})"
    return None


def require_netns(flag: str = "--emulate", tools: tuple[str, ...] = ("ip", "tc", "unshare")) -> None:
    """Raise ``LaunchError`` (one line, naming ``flag``) when namespaces cannot be built here."""
    reason = netns_missing_reason(tools)
    if reason:
        raise LaunchError(f"{flag} cannot build its namespaces: {reason}")


def run_tool(argv: list[str] | tuple[str, ...], what: str = "") -> str:
    """Run an iproute2 command; a failure becomes one ``LaunchError`` line with its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"{what or argv[0]}: '{' '.join(argv)}' failed: {error}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise LaunchError(f"{what or argv[0]}: '{' '.join(argv)}' failed: {detail[-1] if detail else done.returncode}")
    return done.stdout


def check_name(name: str) -> str:
    """Only names we make reach commands and files: lower-case letters, digits and hyphens."""
    if not _NAME.match(name):
        raise LaunchError(f"internal: {name!r} is not a valid namespace/host name")
    return name


def new_tag(prefix: str) -> str:
    """A tag unique to this process and call: ``<prefix>-<pid>-<serial>``."""
    return check_name(f"{prefix}-{os.getpid()}-{next(_serial)}")


def tag_pattern(prefix: str) -> re.Pattern:
    """Matches names of ``prefix``'s runs; group 1 is the tag, group 2 the creator's pid."""
    return re.compile(rf"^({re.escape(prefix)}-(\d+)-\d+)(?:-|$)")


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live creator from a recycled pid), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_owner(tag: str) -> Path:
    """The tag's state directory, with the creator's pid and start time, made before anything else."""
    state = STATE_ROOT / check_name(tag)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    return state


def _owner_alive(tag: str, pid: int) -> bool:
    started = _start_time(pid)
    if started is None:
        return False
    try:
        recorded = (STATE_ROOT / tag / "owner").read_text().split()
    except OSError:
        return True  # no record (yet): trust the pid, the creator may be writing it now
    return recorded[:2] == [str(pid), started]


def uts_prefix(namespace: str, hostname: str) -> list[str]:
    """argv prefix running a command in ``namespace`` under its own hostname."""
    return ["ip", "netns", "exec", check_name(namespace), "unshare", "--uts", "--",
            "sh", "-c", _SET_HOSTNAME, check_name(hostname)]


def list_namespaces() -> list[str]:
    """Names of all persistent network namespaces (``ip netns add``)."""
    try:
        return sorted(entry.name for entry in NETNS_RUN.iterdir())
    except OSError:
        return []


def namespace_pids(namespace: str) -> list[int]:
    """Processes inside ``namespace``, never this one (which may be cleaning up from inside a node)."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in listed.stdout.split() if pid.isdigit() and int(pid) != os.getpid()]


def kill_namespace_processes(namespaces: list[str]) -> None:
    """SIGTERM every process inside ``namespaces``, SIGKILL those still there after a grace time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + _KILL_WAIT_S
        pids = [pid for name in namespaces for pid in namespace_pids(name)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [pid for name in namespaces for pid in namespace_pids(name)]
        if not pids:
            return


def tag_leftovers(tag: str) -> list[str]:
    """Everything of ``tag`` that still exists: namespaces, /etc/netns entries, the state directory."""
    found = [f"namespace {name}" for name in list_namespaces() if name.startswith(tag + "-")]
    with contextlib.suppress(OSError):
        found += [f"{NETNS_ETC / entry.name}" for entry in NETNS_ETC.iterdir() if entry.name.startswith(tag + "-")]
    if (STATE_ROOT / tag).exists():
        found.append(str(STATE_ROOT / tag))
    return found


def remove_tag(tag: str) -> None:
    """Remove every namespace, file and process of ``tag``; safe to repeat and to race with."""
    check_name(tag)
    namespaces = [name for name in list_namespaces() if name.startswith(tag + "-")]
    kill_namespace_processes(namespaces)
    for name in namespaces:
        # Deleting a namespace also deletes the veths and bridges inside it, and with a veth its peer.
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    with contextlib.suppress(OSError):
        for entry in NETNS_ETC.iterdir():
            if entry.name.startswith(tag + "-"):
                shutil.rmtree(entry, ignore_errors=True)
    shutil.rmtree(STATE_ROOT / tag, ignore_errors=True)


def stale_tags(prefix: str) -> list[str]:
    """Tags of ``prefix`` whose creator process is gone (killed before it could clean up)."""
    pattern = tag_pattern(prefix)
    names = list_namespaces()
    with contextlib.suppress(OSError):
        names += [entry.name for entry in NETNS_ETC.iterdir()]
    with contextlib.suppress(OSError):
        names += [entry.name for entry in STATE_ROOT.iterdir()]
    tags = {match.group(1): int(match.group(2)) for match in map(pattern.match, names) if match}
    return sorted(tag for tag, pid in tags.items() if not _owner_alive(tag, pid))


def remove_stale(prefix: str) -> list[str]:
    """Remove what dead runs of ``prefix`` left behind; returns their tags."""
    tags = stale_tags(prefix)
    for tag in tags:
        remove_tag(tag)
    return tags


def start_guard(tag: str) -> subprocess.Popen:
    """A process that removes ``tag`` once this one is gone, however it ended (even SIGKILL).

    It waits for the end of a pipe whose only writer is this process: the kernel closes it when
    this process dies. Its own session keeps a Ctrl-C or SIGTERM meant for the job away from it.
    """
    return subprocess.Popen([sys.executable, "-m", "asyncddp.launcher.netns", "guard", check_name(tag)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def stop_guard(guard: subprocess.Popen) -> None:
    """End a guard whose tag this process has already removed."""
    close_guard(guard)


def _guard_main(tag: str) -> None:
    check_name(tag)
    sys.stdin.buffer.read()  # returns at EOF: the creator closed the pipe or died
    if tag_leftovers(tag):
        remove_tag(tag)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "guard":
        _guard_main(sys.argv[2])
    else:
        sys.exit("usage: python -m asyncddp.launcher.netns guard TAG")
