"""Interactive mode (BlueFog's ``ibfrun``): an ipyparallel cluster whose engines are MPI ranks.

``start`` runs an ipyparallel controller on this machine, then launches ``-np N`` engines
(``python -m ipyparallel.engine``) with ``asyncddp run``: the same ``plan_job`` and job runner as
any training job, so ``--hostfile``/``-H``/``--config``/``-x`` mean the same. A notebook then
connects with ``ipyparallel.Client(profile=...)`` and every ``%%px`` cell runs on every rank; each engine calls
``asyncddp.init()`` itself. The profile directory (``$IPYTHONDIR/profile_<name>``, default profile
``asyncddp``) is created for the user; ``asyncddp_ipy.json`` in it records the two processes
started, so that ``stop`` and ``status`` (another shell, later) find them. ``stop`` interrupts the
runner with SIGTERM (which stops every rank), ends the controller, and finally ends any process
still naming the profile directory on its command line — nothing of the cluster is left running.
``start`` itself, stopped by SIGINT, SIGTERM or SIGHUP before every engine registered, ends what
it started the same way (``stop_signals``); once it returned, the cluster is ``stop``'s to end.
"""

from __future__ import annotations

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

    def to_dict(self) -> dict:
        return asdict(self)


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
    running = _alive(controller) and _alive(runner)
    engines = 0
    if running and count_engines:
        require_ipyparallel()
        try:
            engines = _count_engines(directory)
        except Exception:  # noqa: BLE001  (controller not answering yet: zero engines known)
            engines = 0
    return IpyStatus(profile, str(directory), running, engines, controller, runner, state.get("log"))


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
        state["controller_pid"] = controller.pid
        _write_state(directory, state)
        _wait_for(lambda: (directory / "security" / "ipcontroller-engine.json").exists(), controller,
                  timeout, f"the ipyparallel controller did not start within {timeout:g} s; see {log}")
        with open(log, "a") as sink:
            runner = subprocess.Popen(_engine_argv(num_ranks, directory, launch),
                                      stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        state["runner_pid"] = runner.pid
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


def _write_state(directory: Path, state: dict) -> None:
    (directory / STATE_FILE).write_text(json.dumps(state))


def _wait_for(ready, process: subprocess.Popen, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise LaunchError(message)
        time.sleep(0.1)


def _processes_naming(directory: Path) -> list[int]:
    """Pids whose command line names the profile directory (engines, controller, runner)."""
    marker = f"--profile-dir={directory}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes() and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            break
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _stop_processes(directory: Path, state: dict) -> None:
    runner, controller = state.get("runner_pid"), state.get("controller_pid")
    if runner and _alive(runner):
        # SIGTERM, not SIGINT: a cluster started from a script in the background inherits an
        # ignored SIGINT, and asyncddp run keeps ignoring what it was started ignoring.
        _signal(runner, signal.SIGTERM)
        _wait_gone([runner], 20)
    if controller and _alive(controller):
        _signal(controller, signal.SIGTERM)
        _wait_gone([controller], 10)
    leftover = _processes_naming(directory)
    for pid in leftover:
        _signal(pid, signal.SIGTERM)
    for pid in _wait_gone(leftover, 5):
        _signal(pid, signal.SIGKILL)
    for pid in (runner, controller):
        if pid:
            try:  # reap our own children when start() itself is the parent
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    (directory / STATE_FILE).unlink(missing_ok=True)


def stop(profile: str = DEFAULT_PROFILE, ipython_dir: str | None = None) -> IpyStatus:
    """Stop the cluster of ``profile`` (engines first, then the controller). Raises when none runs."""
    directory = profile_dir(profile, ipython_dir)
    state = _read_state(directory)
    if not state and not _processes_naming(directory):
        raise LaunchError(f"no interactive cluster of profile {profile} is running (nothing recorded in "
                            f"{directory / STATE_FILE}); start one with asyncddp ipy start -np N")
    _stop_processes(directory, state)
    return IpyStatus(profile, str(directory), False, 0, state.get("controller_pid"), state.get("runner_pid"),
                     state.get("log"))
