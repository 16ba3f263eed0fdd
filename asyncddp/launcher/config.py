"""YAML cluster configs and the one merge of defaults, config file and CLI flags into ``RunConfig``.

Schema (every key optional except ``hosts``, which ``emulate`` replaces; ``configs/cluster.example.yaml`` is the commented
example)::

    hosts:                       # list; each entry a mapping
      - name: node1              # host name or address (required)
        slots: 4                 # ranks this host takes (default 1)
        max_slots: 8             # hard cap when oversubscribing
        user: alice              # ssh user, port and key for this host (override ``ssh:``)
        port: 2222
        identity_file: ~/.ssh/id_ed25519
        python: /opt/venv/bin/python   # interpreter for .py scripts and -m on this host
    ssh:                         # defaults for every host
      user: alice
      port: 22
      identity_file: ~/.ssh/id_ed25519
      known_hosts: ~/.ssh/known_hosts  # host keys are always checked against this file
    env:
      forward: [WANDB_API_KEY, "NCCL_*"]   # names or globs taken from the launching shell
      set: {OMP_NUM_THREADS: 1}            # explicit values
    network: eth0                # interface name, or a subnet like 10.0.0.0/24
    mpi_args: [--mca, btl, "^openib"]      # extra mpirun arguments (list, or one string)
    working_dir: /shared/project # where ranks start
    python: /opt/venv/bin/python # default interpreter on every host
    np: 8                        # default number of ranks
    emulate: nodes=4,bandwidth=1gbit   # instead of hosts: an emulated cluster (see --emulate)

Unknown keys are errors naming the file, line and YAML path. Precedence is CLI flag > config file
> default, applied by ``merge_run_config`` alone; list-valued settings (env, mpi_args) are joined,
file first, so the CLI's come later and win where mpirun lets the last one win.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from asyncddp.errors import ConfigError
from asyncddp.launcher.emulate_spec import EmulateSpec, parse_emulate_spec
from asyncddp.launcher.hosts import HostSpec, check_unique
from asyncddp.launcher.input_files import read_input_file

__all__ = ["SshSettings", "ClusterConfig", "RunOptions", "RunConfig", "load_config", "parse_config_text", "merge_run_config", "parse_env_flag"]


@dataclass(frozen=True)
class SshSettings:
    """Cluster-wide ssh defaults; ``known_hosts`` replaces ``~/.ssh/known_hosts`` for host keys."""

    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """A parsed YAML cluster config. ``hosts`` already carry the ``ssh:`` defaults."""

    source: str
    hosts: tuple[HostSpec, ...]
    ssh: SshSettings = SshSettings()
    env_forward: tuple[str, ...] = ()
    env_set: tuple[tuple[str, str], ...] = ()
    network: str | None = None
    mpi_args: tuple[str, ...] = ()
    working_dir: str | None = None
    python: str | None = None
    num_ranks: int | None = None
    emulate: EmulateSpec | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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

    def to_dict(self) -> dict:
        return asdict(self)


# --- YAML with line numbers -------------------------------------------------------------------

class _Map(dict):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int = 0
    key_lines: dict


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class _Reader:
    """Typed access to a parsed YAML tree; every error names file:line and the YAML path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, line: int, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{line}: {path}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], line: int) -> _Map:
        if not isinstance(value, _Map):
            raise self.fail(line, path, f"expected a mapping with keys {', '.join(allowed)}")
        for key in value:
            if key not in allowed:
                raise self.fail(value.key_lines[key], f"{path}.{key}" if path else str(key),
                                f"unknown key {key!r}; allowed here: {', '.join(allowed)}")
        return value

    def get(self, mapping: _Map, key: str, kind: type, path: str, default: Any = None) -> Any:
        if key not in mapping or mapping[key] is None:
            return default
        value, line = mapping[key], mapping.key_lines[key]
        where = f"{path}.{key}" if path else key
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self.fail(line, where, f"expected a positive whole number, got {value!r}")
            return value
        if kind is str:
            if isinstance(value, (dict, list)):
                raise self.fail(line, where, f"expected text, got {type(value).__name__}")
            return str(value)
        if kind is list:
            if isinstance(value, str):
                return shlex.split(value)
            if not isinstance(value, list) or any(isinstance(item, (dict, list)) for item in value):
                raise self.fail(line, where, "expected a list of strings (or one string)")
            return [str(item) for item in value]
        raise TypeError(kind)


_TOP_KEYS = ("hosts", "ssh", "env", "network", "mpi_args", "working_dir", "python", "np", "emulate")
_HOST_KEYS = ("name", "slots", "max_slots", "user", "port", "identity_file", "python")
_SSH_KEYS = ("user", "port", "identity_file", "known_hosts")
_ENV_KEYS = ("forward", "set")


def _expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path else path


def _read_host(reader: _Reader, entry: Any, index: int, ssh: SshSettings, line: int) -> HostSpec:
    path = f"hosts[{index}]"
    entry = reader.mapping(entry, path, _HOST_KEYS, line)
    name = reader.get(entry, "name", str, path)
    if not name:
        raise reader.fail(entry.line, path, "every host needs a 'name'")
    slots = reader.get(entry, "slots", int, path, 1)
    max_slots = reader.get(entry, "max_slots", int, path)
    if max_slots is not None and max_slots < slots:
        raise reader.fail(entry.key_lines["max_slots"], f"{path}.max_slots", f"{max_slots} is below slots={slots}")
    return HostSpec(
        name=name,
        slots=slots,
        max_slots=max_slots,
        ssh_user=reader.get(entry, "user", str, path, ssh.user),
        ssh_port=reader.get(entry, "port", int, path, ssh.port),
        identity_file=_expand(reader.get(entry, "identity_file", str, path, ssh.identity_file)),
        python=reader.get(entry, "python", str, path),
        source=f"{reader.source}:{entry.line} {path}",
    )


def _read_env(reader: _Reader, top: _Map) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    if top.get("env") is None:
        return (), ()
    env = reader.mapping(top["env"], "env", _ENV_KEYS, top.key_lines["env"])
    forward = tuple(reader.get(env, "forward", list, "env", []))
    pairs = env.get("set") or _Map()
    if not isinstance(pairs, _Map) or any(isinstance(v, (dict, list)) for v in pairs.values()):
        raise reader.fail(env.key_lines.get("set", env.line), "env.set", "expected a mapping NAME: value")
    return forward, tuple((str(name), "" if value is None else str(value)) for name, value in pairs.items())


def parse_config_text(text: str, source: str) -> ClusterConfig:
    """Parse a YAML cluster config; ``source`` names it in errors."""
    try:
        top = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source}{line}: not valid YAML ({problem}); fix the syntax") from None
    reader = _Reader(source)
    top = reader.mapping(top, "", _TOP_KEYS, 1)
    ssh = SshSettings()
    if top.get("ssh") is not None:
        block = reader.mapping(top["ssh"], "ssh", _SSH_KEYS, top.key_lines["ssh"])
        ssh = SshSettings(
            user=reader.get(block, "user", str, "ssh"),
            port=reader.get(block, "port", int, "ssh"),
            identity_file=_expand(reader.get(block, "identity_file", str, "ssh")),
            known_hosts=_expand(reader.get(block, "known_hosts", str, "ssh")),
        )
    emulate = _read_emulate(reader, top)
    entries = top.get("hosts")
    if emulate is not None and entries is not None:
        raise reader.fail(top.key_lines["hosts"], "hosts", "emulate makes its own hosts; keep hosts or emulate, not both")
    if emulate is None and (not isinstance(entries, list) or not entries):
        raise reader.fail(top.key_lines.get("hosts", 1), "hosts", "give a non-empty list of hosts (- name: node1, slots: 4)")
    hosts = [_read_host(reader, entry, index, ssh, top.key_lines["hosts"]) for index, entry in enumerate(entries or [])]
    check_unique(hosts)
    forward, pairs = _read_env(reader, top)
    return ClusterConfig(
        source=source,
        hosts=tuple(hosts),
        ssh=ssh,
        env_forward=forward,
        env_set=pairs,
        network=reader.get(top, "network", str, ""),
        mpi_args=tuple(reader.get(top, "mpi_args", list, "", [])),
        working_dir=reader.get(top, "working_dir", str, ""),
        python=reader.get(top, "python", str, ""),
        num_ranks=reader.get(top, "np", int, ""),
        emulate=emulate,
    )


def _read_emulate(reader: _Reader, top: _Map) -> EmulateSpec | None:
    """``emulate: nodes=4,bandwidth=1gbit`` or the same as a mapping (slow_node may be a list)."""
    if top.get("emulate") is None:
        return None
    value, line = top["emulate"], top.key_lines["emulate"]
    if isinstance(value, _Map):
        items = [(key, item) for key, entry in value.items() for item in (entry if isinstance(entry, list) else [entry])]
        value = ",".join(f"{key}={item}" for key, item in items)
    elif isinstance(value, list):
        raise reader.fail(line, "emulate", "expected nodes=N,... or a mapping like {nodes: 4, bandwidth: 1gbit}")
    return parse_emulate_spec(str(value), source=f"{reader.source}:{line}: emulate")


def load_config(path: str | Path) -> ClusterConfig:
    """Read and parse the YAML cluster config at ``path``."""
    path = Path(path)
    text = read_input_file(path, "config", "--config", "YAML file", ConfigError)
    return parse_config_text(text, str(path))


# --- the merge ---------------------------------------------------------------------------------

def parse_env_flag(item: str) -> tuple[str, str | None]:
    """``-x NAME`` -> (NAME, None); ``-x NAME=value`` -> (NAME, value)."""
    name, equals, value = item.partition("=")
    if not name or not (name.replace("_", "a").isalnum() or any(c in name for c in "*?[")):
        raise ConfigError(f"-x {item!r}: expected NAME, NAME=value or a glob like NCCL_*")
    return name, (value if equals else None)


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
        hosts = tuple(replace(host, ssh_port=host.ssh_port or options.ssh_port) for host in hosts)
    mpi_args = list(cluster.mpi_args if cluster else ())
    if options.use_infiniband:
        mpi_args += ["--mca", "pml", "ucx"]
    if options.mpi_args:
        mpi_args += shlex.split(options.mpi_args)
    if options.timeout is not None and options.timeout <= 0:
        raise ConfigError(f"--timeout {options.timeout}: give a positive number of seconds")
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
        timeline=os.path.abspath(options.timeline) if options.timeline else None,
    )
