"""Plan a job: the exact mpirun argument list, its environment and the rank -> host map.

Everything here is pure (no subprocess): ``build_plan`` turns a merged ``RunConfig`` plus the MPI
installation found on this machine into a ``LaunchPlan`` that tests compare with literal lists and
``--dry-run`` prints. ``asyncddp.launcher.job`` is the one module that runs it. What differs between
Open MPI 4, Open MPI 5 (PRRTE) and MPICH (Hydra) is asked of their objects in ``asyncddp.launcher.mpi``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asyncddp.launcher.run_config import RunConfig
from asyncddp.errors import LaunchError
from asyncddp.launcher.hosts import HostSpec, launches_over_ssh, mpirun_host_name, rank_hosts
from asyncddp.comm.timeline import PARTS_ENV as TIMELINE_PARTS_ENV
from asyncddp.launcher.argv_text import json_safe, shell_join, shell_quote
from asyncddp.launcher.validation import as_operand, check_script
from asyncddp.launcher.mpi import DETECTOR, MpiFlavor, MpiImplementation, MpiInstall, library_env
from asyncddp.launcher import torch_env

__all__ = ["LaunchPlan", "resolve_command", "ssh_config_text", "build_plan", "format_plan"]


@dataclass(frozen=True)
class LaunchPlan:
    """What ``asyncddp.launcher.job`` executes: ``argv`` (no shell), the variables set on top of the
    caller's environment, the rank -> host map and private files to write first (ssh_config)."""

    argv: tuple[str, ...]
    env: dict[str, str]
    rank_hosts: tuple[str, ...]
    hosts: tuple[HostSpec, ...]
    flavor: MpiFlavor
    groups: tuple[tuple[str, ...], ...] = ()  # argv split into "flag value" lines for --dry-run
    files: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    links: dict[str, str] = field(default_factory=dict)  # symlink path -> target, made before the job
    fault_tolerant: bool = False  # each rank runs under asyncddp.launcher.rank_guard; survivors go on
    min_ranks: int | None = None  # fault-tolerant jobs: fewer ranks finishing fails the job

    def to_dict(self) -> dict:
        data = asdict(self)
        data["argv"] = list(self.argv)
        data["command_line"] = shell_join(self.argv)  # exact, also for arguments that are not UTF-8
        data["rank_hosts"] = list(self.rank_hosts)
        if torch_env.NODES_ENV in self.env:
            data["torch_env"] = torch_env.planned_ranks(self.rank_hosts, self.env)
        del data["groups"]
        return json_safe(data)


def resolve_command(command: tuple[str, ...], python: str, check_dir: str | None = None) -> tuple[str, ...]:
    """The per-rank command: ``.py`` scripts and ``-m module`` run with ``python``.

    They run under ``python -m mpi4py`` so that ``sys.exit(7)`` or an exception on one rank aborts
    the whole job with that code instead of leaving the others waiting in ``MPI_Finalize``.
    ``check_dir`` (None: skip the checks) is where a relative script path must exist.
    """
    if not command:
        raise LaunchError("no command to run: give a script (train.py), -m module, or a command")
    head, rest = command[0], command[1:]
    if head == "-m":
        if not rest:
            raise LaunchError("-m needs a module name: asyncddp run -np 2 -m package.module")
        return (python, "-m", "mpi4py", "-m", *rest)
    if head.endswith(".py"):
        if check_dir is not None:
            check_script(Path(check_dir) / head, head, check_dir)
        return (python, "-m", "mpi4py", as_operand(head), *rest)
    if shutil.which(head) is not None:
        return tuple(command)
    if check_dir is not None:
        if (Path(check_dir) / head).is_dir():
            check_script(Path(check_dir) / head, head, check_dir)
        if not (Path(check_dir) / head).is_file():
            raise LaunchError(f"command {head!r} not found on PATH; give a script path, -m module or an installed "
                              "command")
    return (as_operand(head), *rest)


def ssh_config_text(hosts: tuple[HostSpec, ...], known_hosts: str | None) -> str:
    """A private ssh_config with each remote host's user, port and key.

    Host keys are checked (StrictHostKeyChecking yes) against ``known_hosts`` or the user's default
    file: an unknown key fails fast instead of prompting, which would hang mpirun.
    """
    lines = ["# written by asyncddp run: per-host ssh settings for mpirun's daemons"]
    for host in hosts:
        lines += [f"Host {mpirun_host_name(host)}", f"    HostName {host.name}"]
        if host.ssh_user:
            lines.append(f"    User {host.ssh_user}")
        if host.ssh_port:
            lines.append(f"    Port {host.ssh_port}")
        if host.identity_file:
            lines += [f"    IdentityFile {host.identity_file}", "    IdentitiesOnly yes"]
    # ConnectTimeout: an unreachable host fails in seconds instead of after TCP's minutes of retries.
    lines += ["Host *", "    BatchMode yes", "    StrictHostKeyChecking yes", "    ConnectTimeout 10"]
    if known_hosts:
        lines.append(f"    UserKnownHostsFile {known_hosts}")
    return "\n".join(lines) + "\n"


def _forwarded_names(config: RunConfig, environ: dict[str, str], planned: dict[str, str]) -> list[str]:
    names: list[str] = []
    for pattern in config.env_forward:
        if any(char in pattern for char in "*?["):
            names += sorted(name for name in environ if fnmatch.fnmatchcase(name, pattern))
        elif pattern in environ or pattern in planned:
            names.append(pattern)
        # A config's name that is unset here is skipped, like a glob matching nothing (-x NAME
        # on the command line was checked by merge_run_config).
    return list(dict.fromkeys([*names, *planned]))


def _network_flags(network: str, mpi: MpiImplementation) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    try:
        ipaddress.ip_network(network, strict=False)
        is_subnet = "/" in network
    except ValueError:
        is_subnet = False
    env = {} if is_subnet else {"NCCL_SOCKET_IFNAME": network, "GLOO_SOCKET_IFNAME": network}
    return mpi.network_flags(network, is_subnet), env


def _check_slots(config: RunConfig, ranks: list[str]) -> None:
    total = sum(host.slots for host in config.hosts)
    if config.num_ranks > total and not config.oversubscribe:
        raise LaunchError(f"-np {config.num_ranks} is more than the {total} slots of {config.host_source}; "
                          "lower -np, add slots, or pass --oversubscribe")
    for host in config.hosts:
        placed = ranks.count(host.name)
        if host.max_slots is not None and placed > host.max_slots:
            raise LaunchError(f"-np {config.num_ranks} puts {placed} ranks on {host.name} but {host.source} "
                              f"caps it at max_slots={host.max_slots}; lower -np or raise max_slots")


def _app_contexts(config: RunConfig, ranks: list[str], python: str, check_dir: str | None,
                  mpi: MpiImplementation) -> list[tuple[str, ...]]:
    """One app context, or one per host (MPMD ``a : b``) when hosts need different interpreters."""
    pythons = {host.name: host.python or config.python or python for host in config.hosts}
    is_python = config.command[0] == "-m" or config.command[0].endswith(".py")

    def guarded(command: tuple[str, ...], host_python: str) -> tuple[str, ...]:
        if config.torch is not None:  # torchrun's variables from the rank's own MPI ranks first
            # A Python rank (python -m mpi4py ...) continues in the shim's interpreter.
            python_rank = command[:2] == (host_python, "-m")
            command = (host_python, *torch_env.SHIM, *(command[1:] if python_rank else command))
        # The guard reports how its rank ended (mpirun under ULFM does not); it runs on the rank's Python.
        return (host_python, "-m", "asyncddp.launcher.rank_guard", *command) if config.fault_tolerant else command

    wrapped = config.torch is not None or config.fault_tolerant
    if (not is_python and not wrapped) or len(set(pythons[name] for name in ranks)) == 1:
        command = resolve_command(config.command, pythons[ranks[0]] if is_python else python, check_dir)
        return [guarded(command, pythons[ranks[0]])]
    contexts: list[tuple[str, ...]] = []
    for host in config.hosts:
        count = ranks.count(host.name)
        if count:
            command = guarded(resolve_command(config.command, pythons[host.name], check_dir), pythons[host.name])
            contexts.append(("-np", str(count), mpi.host_flag, f"{mpirun_host_name(host)}:{count}", *command))
    return contexts


MPI4PY_LIBRARY_ENV = ("MPI4PY_LIBMPI", "MPI4PY_MPIABI")  # the user's own choice of library for mpi4py


def _user_sets(name: str, config: RunConfig, environ: dict[str, str]) -> bool:
    return name in environ or any(key == name for key, _ in config.env_set)


def _library_env(config: RunConfig, mpi: MpiInstall, environ: dict[str, str], private_dir: str,
                 remote: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Each rank's mpi4py loads ``mpi``'s own libmpi, unless the user chose one."""
    if any(_user_sets(name, config, environ) for name in MPI4PY_LIBRARY_ENV):
        return {}, {}
    return library_env(mpi, private_dir, environ, remote)


def build_plan(config: RunConfig, mpi: MpiInstall, *, python: str = sys.executable, euid: int = 0,
               environ: dict[str, str] | None = None, private_dir: str = "/tmp",
               check_dir: str | None = None, cpu_count: int | None = None) -> LaunchPlan:
    """The launch plan for ``config`` on ``mpi``: a pure function of its arguments.

    ``environ`` is the caller's environment (for globs and defaults), ``private_dir`` where the
    ssh_config goes, ``check_dir`` where scripts must exist (None skips file checks),
    ``cpu_count`` this machine's cores (None: don't adapt to them).
    """
    environ = dict(os.environ if environ is None else environ)
    impl = mpi.flavor.implementation
    ranks = rank_hosts(list(config.hosts), config.num_ranks)
    _check_slots(config, ranks)
    remote = tuple(host for host in config.hosts if launches_over_ssh(host))
    host_arg = ",".join(f"{mpirun_host_name(host)}:{host.slots}" for host in config.hosts)
    oversubscribe = config.oversubscribe and config.num_ranks > sum(host.slots for host in config.hosts)

    env: dict[str, str] = {"PYTHONUNBUFFERED": environ.get("PYTHONUNBUFFERED", "1")}
    groups: list[tuple[str, ...]] = [(mpi.path,), ("-np", str(config.num_ranks))]
    groups += impl.launch_flags(host_arg, oversubscribe)
    if euid == 0:
        root_groups, root_env = impl.root_flags()
        groups += root_groups
        env.update(root_env)
    # More ranks than cores on this machine: waiting ranks that busy-poll steal the time slices of
    # the ranks with work (a 1 KB allreduce then takes ms, not us); make them yield instead.
    idle = impl.idle_env()
    if (cpu_count is not None and not remote and config.num_ranks > cpu_count
            and not any(_user_sets(name, config, environ) for name in idle)):
        env.update(idle)
    library_env, links = _library_env(config, mpi, environ, private_dir, bool(remote))
    env.update(library_env)

    files: dict[str, str] = {}
    if remote:
        text = ssh_config_text(remote, config.known_hosts)
        ssh_config = os.path.join(private_dir, f"ssh_config.{hashlib.sha256(text.encode()).hexdigest()[:12]}")
        files[ssh_config] = text
        remote_groups, remote_files = impl.remote_flags(ssh_config, mpi.prefix)
        groups += remote_groups
        files.update(remote_files)
    if config.network:
        network_groups, network_env = _network_flags(config.network, impl)
        groups += network_groups
        env.update({name: value for name, value in network_env.items() if name not in environ})
    if config.working_dir:
        groups.append((impl.wdir_flag, config.working_dir))
    if config.timeline:
        env["ASYNCDDP_TIMELINE"] = config.timeline
        if not remote:  # where ranks that skip shutdown() leave their events for the launcher to merge
            env[TIMELINE_PARTS_ENV] = os.path.join(private_dir, "timeline")
    if config.fault_tolerant:
        groups += impl.fault_tolerance_flags(DETECTOR)  # refuses, in one line, where the MPI cannot
        env["ASYNCDDP_FAULT_TOLERANT"] = "1"
        if not _user_sets("MPI4PY_RC_FINALIZE", config, environ):
            # Open MPI's MPI_Finalize waits for every rank of the job, a hung one the survivors left
            # behind included: ranks leave without it (asyncddp.launcher.survival).
            env["MPI4PY_RC_FINALIZE"] = "false"
    if config.max_restarts:
        env["ASYNCDDP_RESTART_COUNT"] = "0"  # each relaunch sets its own count (asyncddp.launcher.restart)
    if config.torch is not None:
        user = torch_env.user_set(config.env_forward, config.env_set)
        env.update(torch_env.job_env(config.torch, config.hosts, ranks, config.max_restarts, user))
    env.update(dict(config.env_set))

    groups += impl.forward_flags(_forwarded_names(config, environ, env))
    if config.mpi_args:
        groups.append(tuple(config.mpi_args))
    contexts = _app_contexts(config, ranks, python, check_dir, impl)
    if len(contexts) == 1:
        groups.append(contexts[0])
    else:
        # MPMD: global flags first, then "-np k --host h:k cmd : ..." with the per-host pythons.
        groups = [group for group in groups if group[0] not in ("-np", "--host", "-hosts")]
        for index, context in enumerate(contexts):
            groups.append(context if index == 0 else (":", *context))
    argv = tuple(part for group in groups for part in group)
    return LaunchPlan(argv=argv, env=env, rank_hosts=tuple(ranks), hosts=config.hosts, flavor=mpi.flavor,
                      groups=tuple(groups), files=files, cwd=config.working_dir if not remote else None,
                      links=links, fault_tolerant=config.fault_tolerant, min_ranks=config.min_ranks)


def format_plan(plan: LaunchPlan) -> str:
    """The ``--dry-run`` text: the command one flag a line, the variables set, the rank map."""
    lines = [" \\\n    ".join(shell_join(group) for group in plan.groups)]
    lines += ["", "environment set for every rank:"]
    lines += [f"    {name}={shell_quote(value)}" for name, value in plan.env.items()]
    for path, text in plan.files.items():
        lines += ["", f"file {path}:"] + [f"    {line}" for line in text.splitlines()]
    for path, target in plan.links.items():
        lines += ["", f"link {path} -> {target}"]
    if torch_env.NODES_ENV in plan.env:
        return "\n".join(lines + _torch_table(plan))
    lines += ["", f"{'rank':>4}  {'host':<24} local rank"]
    seen: dict[str, int] = {}
    for rank, host in enumerate(plan.rank_hosts):
        lines.append(f"{rank:>4}  {host:<24} {seen.get(host, 0)}")
        seen[host] = seen.get(host, 0) + 1
    return "\n".join(lines)


def _torch_table(plan: LaunchPlan) -> list[str]:
    """The rank map with torchrun's per-rank variables as each rank will set them."""
    lines = ["", "torchrun's variables, set on each rank from its own MPI ranks (as planned here):",
             f"{'rank':>4}  {'host':<24} {'LOCAL_RANK':>10} {'LOCAL_WORLD_SIZE':>16} {'GROUP_RANK':>10}"]
    for rank, (host, values) in enumerate(zip(plan.rank_hosts, torch_env.planned_ranks(plan.rank_hosts, plan.env))):
        lines.append(f"{rank:>4}  {host:<24} {values.get('LOCAL_RANK', '(yours)'):>10} "
                     f"{values.get('LOCAL_WORLD_SIZE', '(yours)'):>16} {values.get('GROUP_RANK', '(yours)'):>10}")
    lines.append(f"every rank: RANK = its rank, WORLD_SIZE={len(plan.rank_hosts)}, ROLE_RANK = RANK, "
                 f"ROLE_WORLD_SIZE = WORLD_SIZE, GROUP_WORLD_SIZE = the number of hosts, "
                 f"TORCHELASTIC_RESTART_COUNT = the launch's restart count"
                 + (f"; kept as you set them: {plan.env[torch_env.KEEP_ENV]}" if torch_env.KEEP_ENV in plan.env else ""))
    return lines
