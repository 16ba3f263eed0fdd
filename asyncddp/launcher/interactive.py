"""Interactive mode (BlueFog's ``ibfrun``): an ipyparallel cluster whose engines are MPI ranks.

``start`` runs an ipyparallel controller on this machine, then launches ``-np N`` engines
(``python -m ipyparallel.engine``) with ``asyncddp run``: the same ``plan_job`` and job runner as
any training job, so ``--hostfile``/``-H``/``--config``/``-x`` mean the same. A notebook then
connects with ``ipyparallel.Client(profile=...)`` and every ``%%px`` cell runs on every rank; each engine calls
``asyncddp.init()`` itself. The profile directory (``$IPYTHONDIR/profile_<name>``, default profile
``asyncddp``) is created for the user; ``asyncddp_ipy.json`` in it records the two processes
started, so that ``stop`` and ``status`` (another shell, later) find them. ``stop`` interrupts the
runner with SIGTERM (which stops every rank), ends the controller, and finally ends any process
of this user still naming the profile directory on its command line — nothing of the cluster is
left running.

A recorded PID outlives its process (kill -9, OOM killer, reboot) and may since belong to another
one, so each is recorded with the identity of the process it named: its start time (``/proc``'s
clock ticks since boot), the boot it started in, and its session (both are started as session
leaders); before ``stop`` signals a PID, or ``status`` calls it running, that identity and the
profile directory on its command line must still match. A record none of whose processes match is
stale: reported as such, and removed. (Identity is read from ``/proc``: Linux.)
``start`` itself, stopped by SIGINT, SIGTERM or SIGHUP before every engine registered, ends what
it started the same way (``stop_signals``); once it returned, the cluster is ``stop``'s to end.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from asyncddp.errors import ConfigError, LaunchError
from asyncddp.launcher import stop_signals
from asyncddp.launcher.run_config import RunOptions

__all__ = ["IpyStatus", "profile_dir", "require_ipyparallel", "start", "stop", "status"]

STATE_FILE = "asyncddp_ipy.json"
DEFAULT_PROFILE = "asyncddp"


@dataclass(frozen=True)
class IpyStatus:
    """Where a cluster stands: its profile, the processes asyncddp started, whether they live."""

    profile: str
    profile_dir: str
    running: bool
    num_engines: int = 0
    controller_pid: int | None = None
    runner_pid: int | None = None
    log: str | None = None
    # Recorded PIDs whose process has ended or is now another process (never signalled).
    stale_pids: tuple = ()

    @property
    def stale(self) -> bool:
        return bool(self.stale_pids)

    @property
    def all_stale(self) -> bool:
        """Every recorded PID is stale: the record named nothing of a cluster any more."""
        return self.stale and set(self.stale_pids) >= {p for p in (self.controller_pid, self.runner_pid) if p}

    def to_dict(self) -> dict:
        return {**asdict(self), "stale_pids": list(self.stale_pids), "stale": self.stale}


def require_ipyparallel() -> None:
    if importlib.util.find_spec("ipyparallel") is None:
        raise ConfigError("interactive mode needs ipyparallel, which is not installed: "
                          "pip install 'asyncddp[interactive]' (or pip install ipyparallel)")


def profile_dir(profile: str = DEFAULT_PROFILE, ipython_dir: str | None = None) -> Path:
    """``$IPYTHONDIR/profile_<profile>`` (IPython's own layout, so ``Client(profile=...)`` finds it)."""
    if not profile or "/" in profile:
        raise ConfigError(f"--profile {profile!r}: give a plain name such as {DEFAULT_PROFILE}")
    base = ipython_dir or os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return Path(base) / f"profile_{profile}"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _identity(pid: int) -> dict | None:
    """What tells process ``pid`` from a later process given the same PID, or None when none
    lives (a zombie has ended too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    # Fields after the command name: state, ppid, pgrp, session, ..., starttime (the 20th).
    return {"start_time": int(fields[19]), "session": int(fields[3]), "boot_id": _boot_id()}


def _marker(directory: Path) -> bytes:
    return f"--profile-dir={directory}".encode()


def _is_ours(pid, recorded, directory: Path) -> bool:
    """True when ``pid`` still is the process recorded with identity ``recorded``."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(recorded, dict):
        return False
    if _identity(pid) != recorded:
        return False
    try:
        return _marker(directory) in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _recorded(state: dict) -> list[tuple[int, dict | None]]:
    """``(pid, identity)`` of every process the record names."""
    return [(state[key], state.get(f"{key}_identity")) for key in ("runner_pid", "controller_pid")
            if state.get(key)]


def _stale_pids(directory: Path, state: dict) -> tuple:
    return tuple(pid for pid, identity in _recorded(state) if not _is_ours(pid, identity, directory))


def _read_state(directory: Path) -> dict:
    try:
        return json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _count_engines(directory: Path, timeout: float = 5.0) -> int:
    import ipyparallel

    client = ipyparallel.Client(profile_dir=str(directory), timeout=timeout)
    try:
        return len(client.ids)
    finally:
        client.close()


def status(profile: str = DEFAULT_PROFILE, ipython_dir: str | None = None, count_engines: bool = True) -> IpyStatus:
    """The cluster of ``profile``: running when both the controller and the engine job live."""
    directory = profile_dir(profile, ipython_dir)
    state = _read_state(directory)
    controller, runner = state.get("controller_pid"), state.get("runner_pid")
    stale = _stale_pids(directory, state)
    if state and stale and len(stale) == len(_recorded(state)):
        (directory / STATE_FILE).unlink(missing_ok=True)  # names nothing of ours any more
    running = bool(controller and runner) and not stale
    engines = 0
    if running and count_engines:
        require_ipyparallel()
        try:
            engines = _count_engines(directory)
        except Exception:  # noqa: BLE001  (controller not answering yet: zero engines known)
            engines = 0
    return IpyStatus(profile, str(directory), running, engines, controller, runner, state.get("log"), stale)


def _engine_argv(num_ranks: int, directory: Path, launch: RunOptions) -> list[str]:
    """``asyncddp run`` with the user's launch options, starting one engine per rank."""
    argv = [sys.executable, "-m", "asyncddp", "run", "-np", str(num_ranks)]
    for flag, value in (("--hostfile", launch.hostfile), ("-H", launch.host_list), ("--config", launch.config),
                        ("--mpi-args", launch.mpi_args), ("--network-interface", launch.network),
                        ("-p", launch.ssh_port and str(launch.ssh_port))):
        if value:
            argv += [flag, value]
    for item in launch.env:
        argv += ["-x", item]
    if launch.oversubscribe:
        argv.append("--oversubscribe")
    if launch.use_infiniband:
        argv.append("--use-infiniband")
    return argv + ["-m", "ipyparallel.engine", f"--profile-dir={directory}", "--log-level=WARN"]


def _check_plan(num_ranks: int, launch: RunOptions, directory: Path) -> bool:
    """Plan the engines' job here first (``plan_job``, as ``asyncddp run`` will): a bad hostfile,
    -np or MPI fails now, in one line. Returns whether every host is this machine (then the
    controller listens on loopback only)."""
    from asyncddp.launcher.hosts import launches_over_ssh
    from asyncddp.launcher.prepare import plan_job

    options = replace(launch, command=("-m", "ipyparallel.engine", f"--profile-dir={directory}"),
                      num_ranks=num_ranks)
    with stop_signals.private_dir("asyncddp-ipy-") as private_dir:
        job = plan_job(options, private_dir)
    return not any(launches_over_ssh(host) for host in job.config.hosts)


@stop_signals.handled()
def start(num_ranks: int, profile: str = DEFAULT_PROFILE, *, launch: RunOptions = RunOptions(),
          ipython_dir: str | None = None, timeout: float = 120.0) -> IpyStatus:
    """Start the controller and ``num_ranks`` MPI engines where ``launch`` (hosts, config, -x, mpirun
    arguments; as for ``asyncddp run``) says; returns once all engines registered."""
    from asyncddp.launcher.validation import check_seconds

    check_seconds(timeout, "--timeout")
    require_ipyparallel()
    directory = profile_dir(profile, ipython_dir)
    current = status(profile, ipython_dir, count_engines=False)
    if current.running:
        raise LaunchError(f"an interactive cluster of profile {profile} is already running (controller pid "
                          f"{current.controller_pid}); run asyncddp ipy stop --profile {profile} first")
    if current.controller_pid or current.runner_pid:
        _stop_processes(directory, _read_state(directory))  # half of an old cluster: clear it
    local = _check_plan(num_ranks, launch, directory)
    _make_profile(directory)
    log = directory / "log" / "asyncddp-ipy.log"
    state = {"controller_pid": None, "runner_pid": None, "num_ranks": num_ranks, "log": str(log)}
    try:
        with open(log, "w") as sink:
            controller = subprocess.Popen(
                [sys.executable, "-m", "ipyparallel.controller", f"--profile-dir={directory}",
                 f"--ip={'127.0.0.1' if local else '*'}", "--log-level=WARN"],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        _record(state, "controller_pid", controller.pid)
        _write_state(directory, state)
        _wait_for(lambda: (directory / "security" / "ipcontroller-engine.json").exists(), controller,
                  timeout, f"the ipyparallel controller did not start within {timeout:g} s; see {log}")
        with open(log, "a") as sink:
            runner = subprocess.Popen(_engine_argv(num_ranks, directory, launch),
                                      stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        _record(state, "runner_pid", runner.pid)
        _write_state(directory, state)
        import ipyparallel

        client = ipyparallel.Client(profile_dir=str(directory), timeout=timeout)
        try:
            deadline = time.monotonic() + timeout
            while len(client.ids) < num_ranks:
                if runner.poll() is not None:
                    raise LaunchError(f"the engine job ended (exit {runner.returncode}) before {num_ranks} "
                                      f"engines registered; see {log}")
                if time.monotonic() > deadline:
                    raise LaunchError(f"only {len(client.ids)} of {num_ranks} engines registered within "
                                      f"{timeout:g} s; see {log}")
                time.sleep(0.2)
        finally:
            client.close()
    except BaseException:
        with stop_signals.deferred():  # a second signal must not leave half the cluster running
            _stop_processes(directory, state)
        raise
    return IpyStatus(profile, str(directory), True, num_ranks, controller.pid, runner.pid, str(log))


def _make_profile(directory: Path) -> None:
    """The profile's log and security folders, without an old connection file (which would let
    us "connect" to a dead controller)."""
    try:
        (directory / "log").mkdir(parents=True, exist_ok=True)
        (directory / "security").mkdir(parents=True, exist_ok=True)
        for stale in (directory / "security").glob("ipcontroller-*.json"):
            stale.unlink()
    except OSError as error:
        raise ConfigError(f"cannot create the profile directory {directory} ({error.strerror}): set IPYTHONDIR "
                          "to a directory you can write to, or choose another --profile") from None


def _record(state: dict, key: str, pid: int) -> None:
    """``pid`` and its identity under ``key``. Read once Popen returned: the child has called
    setsid and exec'd by then, so session and command line are final."""
    state[key] = pid
    state[f"{key}_identity"] = _identity(pid)


def _write_state(directory: Path, state: dict) -> None:
    (directory / STATE_FILE).write_text(json.dumps(state))


def _wait_for(ready, process: subprocess.Popen, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise LaunchError(message)
        time.sleep(0.1)


def _names(pid: int, directory: Path) -> bool:
    """True while ``pid`` is a live process of this user naming the profile directory."""
    entry = Path(f"/proc/{pid}")
    try:
        return entry.stat().st_uid == os.getuid() and _marker(directory) in (entry / "cmdline").read_bytes() \
            and _alive(pid)
    except OSError:
        return False


def _processes_naming(directory: Path) -> list[int]:
    """Pids of this user's processes whose command line names the profile directory (engines,
    controller, runner)."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and int(entry.name) != os.getpid() and _names(int(entry.name), directory)]


def _signal(pid: int, sig: int, is_it) -> None:
    """``sig`` to ``pid`` when ``is_it()`` holds. The check runs after the process is pinned by
    a pidfd (Linux 5.3 and later), so its PID cannot pass to another process in between."""
    try:
        pinned = os.pidfd_open(pid)
    except (AttributeError, OSError):  # gone already, or no pidfds here: check, then kill
        pinned = None
    try:
        if not is_it():
            return
        if pinned is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(pinned, sig)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        if pinned is not None:
            os.close(pinned)


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Those of ``pids`` whose process still lives after ``seconds`` (a PID passed to a new
    process counts as gone)."""
    known = {pid: _identity(pid) for pid in pids}
    still = [pid for pid, identity in known.items() if identity is not None]
    deadline = time.monotonic() + seconds
    while still and time.monotonic() < deadline:
        time.sleep(0.1)
        still = [pid for pid in still if _identity(pid) == known[pid]]
    return still


def _stop_processes(directory: Path, state: dict) -> tuple:
    """End what ``state`` records (only processes that still are the ones recorded) and any
    leftover naming ``directory``; returns the recorded PIDs found stale (left alone)."""
    stale = _stale_pids(directory, state)
    ours = [(pid, identity) for pid, identity in _recorded(state) if pid not in stale]
    # Runner first: SIGTERM, not SIGINT: a cluster started from a script in the background
    # inherits an ignored SIGINT, and asyncddp run keeps ignoring what it was started ignoring.
    for pid, identity in ours:
        _signal(pid, signal.SIGTERM, functools.partial(_is_ours, pid, identity, directory))
        _wait_gone([pid], 20 if pid == state.get("runner_pid") else 10)
    leftover = _processes_naming(directory)
    for pid in leftover:
        _signal(pid, signal.SIGTERM, functools.partial(_names, pid, directory))
    for pid in _wait_gone(leftover, 5):
        _signal(pid, signal.SIGKILL, functools.partial(_names, pid, directory))
    for pid, _ in ours:
        try:  # reap our own children when start() itself is the parent
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stale


def stop(profile: str = DEFAULT_PROFILE, ipython_dir: str | None = None) -> IpyStatus:
    """Stop the cluster of ``profile`` (engines first, then the controller). Raises when none runs."""
    directory = profile_dir(profile, ipython_dir)
    state = _read_state(directory)
    if not state and not _processes_naming(directory):
        raise LaunchError(f"no interactive cluster of profile {profile} is running (nothing recorded in "
                            f"{directory / STATE_FILE}); start one with asyncddp ipy start -np N")
    stale = _stop_processes(directory, state)
    return IpyStatus(profile, str(directory), False, 0, state.get("controller_pid"), state.get("runner_pid"),
                     state.get("log"), stale)
