"""The one merge of defaults, a cluster config and command-line flags into the ``RunConfig`` a plan is
built from.

``RunOptions`` is what the user typed (nothing resolved), ``ClusterConfig`` what the YAML file
says (``asyncddp.launcher.config``). Precedence is CLI flag > config file > default, applied by
``merge_run_config`` alone; list-valued settings (env, mpi_args) are joined, file first, so the
CLI's come later and win where mpirun lets the last one win. Every value is checked here, before
anything is written or started.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, replace

from asyncddp.errors import ConfigError
from asyncddp.launcher.config import ClusterConfig
from asyncddp.launcher.hosts import HostSpec, is_local_host
from asyncddp.launcher.torch_env import TorchJob
from asyncddp.launcher.validation import (MAX_SLOTS, check_env_name, check_network, check_output_file,
                                          check_seconds, check_text, quote)

__all__ = ["RunOptions", "RunConfig", "merge_run_config", "parse_env_flag", "MAX_RESTARTS"]

# A job that needs more relaunches than this has a problem a restart will not fix.
MAX_RESTARTS = 100


@dataclass(frozen=True)
class RunOptions:
    """What the user typed on the command line (None/empty = not given)."""

    command: tuple[str, ...] = ()
    num_ranks: int | None = None
    hostfile: str | None = None
    host_list: str | None = None
    config: str | None = None
    env: tuple[str, ...] = ()  # -x NAME or NAME=value, in order
    network: str | None = None
    mpi_args: str | None = None
    output_dir: str | None = None
    timeout: float | None = None
    timeline: str | None = None
    oversubscribe: bool = False
    ssh_port: int | None = None  # bfrun's -p: the port of every host that sets none
    use_infiniband: bool = False  # bfrun's flag: Open MPI's UCX PML, its InfiniBand path since 5.0
    emulate: str | None = None  # --emulate SPEC: an emulated cluster instead of hosts
    fault_tolerant: bool | None = None  # --fault-tolerant / --no-fault-tolerant
    min_ranks: int | None = None
    max_restarts: int | None = None
    master_port: int | None = None  # torchrun's MASTER_PORT pinned (None: a free port per job)


@dataclass(frozen=True)
class RunConfig:
    """Everything a launch needs, after defaults, the config file and CLI flags are merged."""

    command: tuple[str, ...]
    num_ranks: int
    hosts: tuple[HostSpec, ...]
    host_source: str  # "default", a hostfile path, "-H" or a config path: named in slot errors
    oversubscribe: bool
    env_forward: tuple[str, ...] = ()
    env_set: tuple[tuple[str, str], ...] = ()
    network: str | None = None
    mpi_args: tuple[str, ...] = ()
    working_dir: str | None = None
    python: str | None = None
    known_hosts: str | None = None
    output_dir: str | None = None
    timeout: float | None = None
    timeline: str | None = None
    fault_tolerant: bool = False  # survivors of a lost rank go on (ULFM)
    min_ranks: int | None = None  # with fault_tolerant: fewer finishing ranks fail the job
    max_restarts: int = 0  # whole-job relaunches after a failure
    torch: TorchJob | None = None  # torchrun's variables on every rank (asyncddp.launcher.torch_env)

    def to_dict(self) -> dict:
        return asdict(self)


# --- typed access to the YAML tree ------------------------------------------------------------


def parse_env_flag(item: str) -> tuple[str, str | None]:
    """``-x NAME`` -> (NAME, None); ``-x NAME=value`` -> (NAME, value); ``-x NCCL_*`` a glob."""
    name, equals, value = item.partition("=")
    where = f"-x {quote(item)}"
    if not name:
        raise ConfigError(f"{where}: expected NAME, NAME=value or a glob like NCCL_*")
    check_env_name(name, where, allow_glob=not equals)
    return name, (check_text(value, where, allow_newlines=True) if equals else None)


def _hosts_from_flags(options: RunOptions, cluster: ClusterConfig | None) -> tuple[tuple[HostSpec, ...], str, bool]:
    from asyncddp.launcher.hosts import parse_host_list, parse_hostfile

    if options.hostfile is not None and options.host_list is not None:
        raise ConfigError("give either --hostfile or -H, not both")
    if options.hostfile is not None:
        return tuple(parse_hostfile(options.hostfile)), options.hostfile, False
    if options.host_list is not None:
        return tuple(parse_host_list(options.host_list)), f"-H {options.host_list}", False
    if cluster is not None:
        return cluster.hosts, cluster.source, False
    return (), "default", True


def _timeline(path: str | None, hosts: tuple[HostSpec, ...], num_ranks: int) -> str | None:
    if not path:
        return None
    check_text(path, "--timeline")
    from asyncddp.launcher.hosts import launches_over_ssh, rank_hosts

    # Rank 0 writes the file on its own host: only a path on this machine can be checked here.
    first = next(host for host in hosts if host.name == rank_hosts(list(hosts), 1)[0])
    return os.path.abspath(path) if launches_over_ssh(first) else check_output_file(path, "--timeline")


def merge_run_config(options: RunOptions, cluster: ClusterConfig | None = None,
                     environ: dict[str, str] | None = None) -> RunConfig:
    """The one place where CLI flags override the config file and the file overrides defaults.

    ``environ`` (default ``os.environ``) is where ``-x NAME`` must be set.
    """
    environ = os.environ if environ is None else environ
    if not options.command:
        raise ConfigError("no command to run: give a script (train.py), -m module, or a command")
    hosts, source, is_default = _hosts_from_flags(options, cluster)
    if is_default:
        from asyncddp.launcher.slurm import in_slurm_allocation, slurm_hosts

        # Inside salloc/sbatch with no hostfile, -H or config: the allocation is the cluster.
        if in_slurm_allocation(environ):
            hosts, source, is_default = tuple(slurm_hosts(environ)), "Slurm allocation (SLURM_JOB_NODELIST)", False
    num_ranks = options.num_ranks if options.num_ranks is not None else (cluster.num_ranks if cluster else None)
    if num_ranks is None:
        if is_default:
            raise ConfigError("give the number of ranks with -np N (e.g. asyncddp run -np 4 train.py)")
        num_ranks = sum(host.slots for host in hosts)
    if num_ranks < 1:
        raise ConfigError(f"-np {num_ranks}: the number of ranks must be at least 1")
    if num_ranks > MAX_SLOTS:
        raise ConfigError(f"-np {num_ranks}: more ranks than asyncddp launches (at most {MAX_SLOTS})")
    if is_default:
        hosts = (HostSpec("localhost", num_ranks, source="default"),)
    forward = list(cluster.env_forward if cluster else ())
    values = dict(cluster.env_set if cluster else ())
    for item in options.env:
        name, value = parse_env_flag(item)
        if value is None:
            if name not in environ and not any(char in name for char in "*?["):
                raise ConfigError(f"-x {name}: {name} is not set in this shell; export it or write -x {name}=value")
            forward.append(name)
        else:
            values[name] = value
    if options.ssh_port is not None:
        if not 0 < options.ssh_port < 65536:
            raise ConfigError(f"-p/--ssh-port {options.ssh_port}: give a port between 1 and 65535")
        # Like the config's ssh: block, a default for the hosts reached over ssh: localhost stays local.
        hosts = tuple(host if is_local_host(host.name) else replace(host, ssh_port=host.ssh_port or options.ssh_port)
                      for host in hosts)
    mpi_args = list(cluster.mpi_args if cluster else ())
    if options.use_infiniband:
        mpi_args += ["--mca", "pml", "ucx"]
    if options.mpi_args:
        try:
            mpi_args += [check_text(item, "--mpi-args") for item in shlex.split(options.mpi_args)]
        except ValueError as problem:
            raise ConfigError(f"--mpi-args {quote(options.mpi_args)}: {problem}; balance the quotes") from None
    if options.timeout is not None:
        check_seconds(options.timeout, "--timeout")
    if options.network is not None:
        check_network(options.network, "--network-interface")
    fault_tolerant, min_ranks, max_restarts = _survival(options, cluster, num_ranks)
    if options.master_port is not None and not 0 < options.master_port < 65536:
        raise ConfigError(f"--master-port {options.master_port}: give a port between 1 and 65535")
    return RunConfig(
        command=tuple(options.command),
        num_ranks=num_ranks,
        hosts=tuple(hosts),
        host_source=source,
        oversubscribe=is_default or options.oversubscribe,
        env_forward=tuple(dict.fromkeys(forward)),
        env_set=tuple(values.items()),
        network=options.network or (cluster.network if cluster else None),
        mpi_args=tuple(mpi_args),
        working_dir=cluster.working_dir if cluster else None,
        python=cluster.python if cluster else None,
        known_hosts=cluster.ssh.known_hosts if cluster else None,
        output_dir=options.output_dir,
        timeout=options.timeout,
        timeline=_timeline(options.timeline, hosts, num_ranks),
        fault_tolerant=fault_tolerant,
        min_ranks=min_ranks,
        max_restarts=max_restarts,
        torch=TorchJob(master_port=options.master_port),
    )


def _survival(options: RunOptions, cluster: ClusterConfig | None, num_ranks: int) -> tuple[bool, int | None, int]:
    """(fault_tolerant, min_ranks, max_restarts): flags over the config file, checked."""
    def pick(name: str):
        flag = getattr(options, name)
        return flag if flag is not None else (getattr(cluster, name) if cluster else None)

    fault_tolerant, min_ranks, max_restarts = bool(pick("fault_tolerant")), pick("min_ranks"), pick("max_restarts")
    if max_restarts is not None and not 0 <= max_restarts <= MAX_RESTARTS:
        where = "--max-restarts" if options.max_restarts is not None else f"{cluster.source}: max_restarts"
        raise ConfigError(f"{where} {max_restarts}: give a whole number from 0 to {MAX_RESTARTS}")
    if min_ranks is not None:
        where = "--min-ranks" if options.min_ranks is not None else f"{cluster.source}: min_ranks"
        if not fault_tolerant:
            raise ConfigError(f"{where} {min_ranks}: only a fault-tolerant job goes on with fewer ranks; "
                              "add --fault-tolerant (or fault_tolerant: true)")
        if not 1 <= min_ranks <= num_ranks:
            raise ConfigError(f"{where} {min_ranks}: give a number of ranks from 1 to the job's {num_ranks}")
    return fault_tolerant, min_ranks, max_restarts or 0
