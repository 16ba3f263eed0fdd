"""YAML cluster configs: ``load_config`` reads one into a ``ClusterConfig``.

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
    fault_tolerant: true         # a lost rank no longer ends the job (see --fault-tolerant)
    min_ranks: 3                 # with fault_tolerant: fail the job when fewer ranks finish
    max_restarts: 2              # relaunch the whole job after a failure, at most this often

Unknown keys are errors naming the file, line and YAML path, and so is every value that does not
have its syntax (host names, users, ports, key paths, variable names: see ``validation``). The
``ssh:`` defaults apply to the hosts a job reaches over ssh, not to ``localhost`` or ``127.0.0.1``,
unless such an entry sets its own ``port:`` or ``user:``: then it is reached over ssh (an sshd on
this machine, or one forwarded to a container) and takes the defaults too. Anchors and aliases are allowed, but a file whose aliases
expand to more than ``MAX_NODES`` values is refused before anything walks it, as is one larger than
``MAX_CONFIG_BYTES``: reading any config takes bounded time and memory.

What the command line adds, and the precedence between the two, is ``asyncddp.launcher.run_config``.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asyncddp.errors import ConfigError
from asyncddp.launcher.emulate_spec import EmulateSpec, parse_emulate_spec
from asyncddp.launcher.hosts import HostSpec, check_host_count, check_unique, is_local_host
from asyncddp.launcher.input_files import read_input_file
from asyncddp.launcher.yaml_tree import MAX_NODES, Map as _Map, load_yaml
from asyncddp.launcher.validation import (MAX_SLOTS, check_env_name, check_host_name, check_network, check_port,
                                          check_ssh_path, check_text, check_user, quote)

__all__ = ["SshSettings", "ClusterConfig", "load_config", "parse_config_text", "MAX_CONFIG_BYTES", "MAX_NODES"]

# A config listing thousands of hosts is far below this; PyYAML reads about 0.3 MB/s.
MAX_CONFIG_BYTES = 1 << 20


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
    working_dir_where: str = field(default="", compare=False)  # "file:line: working_dir", for its errors
    python: str | None = None
    num_ranks: int | None = None
    emulate: EmulateSpec | None = None
    fault_tolerant: bool | None = None
    min_ranks: int | None = None
    max_restarts: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Reader:
    """Typed access to a parsed YAML tree; every error names file:line and the YAML path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, line: int, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}:{line}: {path}: {message}")

    def where(self, mapping: _Map, key: str, path: str) -> str:
        """``file:line: path.key``, the prefix of the validation errors about that key's value."""
        return f"{self.source}:{mapping.key_lines[key]}: {f'{path}.{key}' if path else key}"

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], line: int) -> _Map:
        if not isinstance(value, _Map):
            raise self.fail(line, path, f"expected a mapping with keys {', '.join(allowed)}")
        for key in value:
            if key not in allowed:
                shown = str(key)[:80]  # the key is the user's text: never echo a huge one
                raise self.fail(value.key_lines[key], f"{path}.{shown}" if path else shown,
                                f"unknown key {quote(key)}; allowed here: {', '.join(allowed)}")
        return value

    def get(self, mapping: _Map, key: str, kind: type, path: str, default: Any = None) -> Any:
        if key not in mapping or mapping[key] is None:
            return default
        value, line = mapping[key], mapping.key_lines[key]
        where = f"{path}.{key}" if path else key
        if kind is bool:
            if not isinstance(value, bool):
                raise self.fail(line, where, f"expected true or false, got {quote(value)}")
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SLOTS:
                shown = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else quote(value)
                raise self.fail(line, where, f"expected a positive whole number (at most {MAX_SLOTS}), got {shown}")
            return value
        if kind is str:
            if isinstance(value, (dict, list)):
                raise self.fail(line, where, f"expected text, got {'a mapping' if isinstance(value, dict) else 'a list'}")
            return check_text(str(value), f"{self.source}:{line}: {where}")
        if kind is list:
            if isinstance(value, str):
                try:
                    items = shlex.split(value)
                except ValueError as problem:
                    raise self.fail(line, where, f"{problem} in {quote(value)}; balance the quotes") from None
            elif not isinstance(value, list) or any(isinstance(item, (dict, list)) for item in value):
                raise self.fail(line, where, "expected a list of strings (or one string)")
            else:
                items = [str(item) for item in value]
            return [check_text(item, f"{self.source}:{line}: {where}") for item in items]
        raise TypeError(kind)


_TOP_KEYS = ("hosts", "ssh", "env", "network", "mpi_args", "working_dir", "python", "np", "emulate",
             "fault_tolerant", "min_ranks", "max_restarts")
_HOST_KEYS = ("name", "slots", "max_slots", "user", "port", "identity_file", "python")
_SSH_KEYS = ("user", "port", "identity_file", "known_hosts")
_ENV_KEYS = ("forward", "set")


def _expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path else path


def _read_ssh_fields(reader: _Reader, block: _Map, path: str) -> SshSettings:
    """The ssh keys of a host entry or of the ``ssh:`` block, each checked against its syntax."""
    values: dict[str, Any] = {}
    if (user := reader.get(block, "user", str, path)) is not None:
        values["user"] = check_user(user, reader.where(block, "user", path))
    if "port" in block and block["port"] is not None:
        values["port"] = check_port(block["port"], reader.where(block, "port", path))
    for key in ("identity_file", "known_hosts"):
        if key in block and (value := reader.get(block, key, str, path)) is not None:
            values[key] = check_ssh_path(_expand(value), reader.where(block, key, path))
    return SshSettings(**values)


def _read_host(reader: _Reader, entry: Any, index: int, ssh: SshSettings, line: int) -> HostSpec:
    path = f"hosts[{index}]"
    entry = reader.mapping(entry, path, _HOST_KEYS, line)
    name = reader.get(entry, "name", str, path)
    if not name:
        raise reader.fail(entry.line, path, "every host needs a 'name'")
    check_host_name(name, reader.where(entry, "name", path))
    slots = reader.get(entry, "slots", int, path, 1)
    max_slots = reader.get(entry, "max_slots", int, path)
    if max_slots is not None and max_slots < slots:
        raise reader.fail(entry.key_lines["max_slots"], f"{path}.max_slots", f"{max_slots} is below slots={slots}")
    own = _read_ssh_fields(reader, entry, path)
    # The ssh: block is for hosts reached over ssh. This machine's names are not, unless their own
    # entry sets a port or user (an sshd here, or forwarded to a container): then they take it too.
    over_ssh = not is_local_host(name) or own.port is not None or own.user is not None
    defaults = ssh if over_ssh else SshSettings()
    return HostSpec(
        name=name,
        slots=slots,
        max_slots=max_slots,
        ssh_user=own.user or defaults.user,
        ssh_port=own.port or defaults.port,
        identity_file=own.identity_file or defaults.identity_file,
        python=reader.get(entry, "python", str, path),
        source=f"{reader.source}:{entry.line} {path}",
    )


def _read_env(reader: _Reader, top: _Map) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    if top.get("env") is None:
        return (), ()
    env = reader.mapping(top["env"], "env", _ENV_KEYS, top.key_lines["env"])
    forward = tuple(reader.get(env, "forward", list, "env", []))
    for name in forward:
        check_env_name(name, reader.where(env, "forward", "env"), allow_glob=True)
    pairs = env.get("set") or _Map()
    if not isinstance(pairs, _Map) or any(isinstance(v, (dict, list)) for v in pairs.values()):
        raise reader.fail(env.key_lines.get("set", env.line), "env.set", "expected a mapping NAME: value")
    values = []
    for name, value in pairs.items():
        where = f"{reader.source}:{pairs.key_lines[name]}: env.set"
        check_env_name(str(name), where)
        values.append((str(name), check_text(_env_text(value, pairs.texts.get(name)), f"{where}.{name}",
                                             allow_newlines=True)))
    return forward, tuple(values)


def _env_text(value: Any, written: str | None) -> str:
    """An ``env.set`` value as the ranks see it: a boolean or number exactly as the file spells it
    (``true``, ``010``, ``1.50``), not as Python would print the value YAML read (``True``, 8, 1.5);
    no value (``NAME:``) is the empty string."""
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)) and written is not None:
        return written
    return str(value)


def parse_config_text(text: str, source: str) -> ClusterConfig:
    """Parse a YAML cluster config; ``source`` names it in errors."""
    top = load_yaml(text, source)
    reader = _Reader(source)
    top = reader.mapping(top, "", _TOP_KEYS, 1)
    ssh = SshSettings()
    if top.get("ssh") is not None:
        ssh = _read_ssh_fields(reader, reader.mapping(top["ssh"], "ssh", _SSH_KEYS, top.key_lines["ssh"]), "ssh")
    emulate = _read_emulate(reader, top)
    entries = top.get("hosts")
    if emulate is not None and entries is not None:
        raise reader.fail(top.key_lines["hosts"], "hosts", "emulate makes its own hosts; keep hosts or emulate, not both")
    if emulate is None and (not isinstance(entries, list) or not entries):
        raise reader.fail(top.key_lines.get("hosts", 1), "hosts", "give a non-empty list of hosts (- name: node1, slots: 4)")
    hosts = [_read_host(reader, entry, index, ssh, top.key_lines["hosts"]) for index, entry in enumerate(entries or [])]
    if hosts:
        check_host_count(hosts, f"{source}:{top.key_lines['hosts']}: hosts")
    check_unique(hosts)
    forward, pairs = _read_env(reader, top)
    return ClusterConfig(
        source=source,
        hosts=tuple(hosts),
        ssh=ssh,
        env_forward=forward,
        env_set=pairs,
        network=_read_network(reader, top),
        mpi_args=tuple(reader.get(top, "mpi_args", list, "", [])),
        working_dir=reader.get(top, "working_dir", str, ""),
        working_dir_where=reader.where(top, "working_dir", "") if "working_dir" in top else "",
        python=reader.get(top, "python", str, ""),
        num_ranks=reader.get(top, "np", int, ""),
        emulate=emulate,
        fault_tolerant=reader.get(top, "fault_tolerant", bool, ""),
        min_ranks=reader.get(top, "min_ranks", int, ""),
        max_restarts=reader.get(top, "max_restarts", int, ""),
    )


def _read_network(reader: _Reader, top: _Map) -> str | None:
    value = reader.get(top, "network", str, "")
    return None if value is None else check_network(value, reader.where(top, "network", ""))


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
    text = read_input_file(path, "config", "--config", "YAML file", ConfigError, MAX_CONFIG_BYTES)
    return parse_config_text(text, str(path))


# --- the merge ---------------------------------------------------------------------------------
