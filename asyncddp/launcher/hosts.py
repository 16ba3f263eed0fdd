"""Hosts and their slots: Open MPI hostfiles and the ``-H host:N,...`` short form.

A hostfile has one host a line, ``name slots=N [max_slots=M]``, with ``#`` comments and blank
lines; a bare ``name`` means one slot. Every mistake (missing file, unknown token, duplicate host,
bad slot count) raises ``HostfileError`` naming ``file:line`` and the fix: a job never falls back
to localhost because its hostfile could not be read. ``HostSpec`` is the record every other module
(launch, doctor, config) uses for a host.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from asyncddp.errors import HostfileError
from asyncddp.launcher.input_files import read_input_file
from asyncddp.launcher.validation import (MAX_HOSTS, MAX_SLOTS, check_host_name, check_port, check_ssh_path,
                                          check_text, check_user, quote)

__all__ = [
    "HostSpec",
    "parse_hostfile",
    "parse_hostfile_text",
    "parse_host_list",
    "check_unique",
    "check_host_count",
    "total_slots",
    "is_local_host",
    "launches_over_ssh",
    "mpirun_host_name",
    "rank_hosts",
]


@dataclass(frozen=True)
class HostSpec:
    """One host of a job and how to reach it.

    ``source`` says where the host was declared ("hosts.txt:3", "-H", "cluster.yaml:hosts[1]") so
    that every later error can point at it.
    """

    name: str
    slots: int
    max_slots: int | None = None
    ssh_user: str | None = None
    ssh_port: int | None = None
    identity_file: str | None = None
    python: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        # The parsers name file:line first; this catches a HostSpec built in code, before any
        # ssh_config line or argv is made from it.
        where = self.source or "host"
        check_host_name(self.name, where, HostfileError)
        if self.ssh_user is not None:
            check_user(self.ssh_user, where, HostfileError)
        if self.ssh_port is not None:
            check_port(self.ssh_port, where, HostfileError)
        if self.identity_file is not None:
            check_ssh_path(self.identity_file, where, HostfileError)
        if self.python is not None:
            check_text(self.python, where, HostfileError)

    def to_dict(self) -> dict:
        return asdict(self)


def _count(text: str, what: str, where: str) -> int:
    # ASCII digits only, at most 8: nothing to convert can be huge or raise.
    digits = text.lstrip("+")
    value = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 8 else 0
    if not 1 <= value <= MAX_SLOTS or str(value) != digits:
        raise HostfileError(f"{where}: {what}={quote(text)} is not a positive whole number (at most {MAX_SLOTS}); "
                            f"write e.g. {what}=4")
    return value


def _parse_line(line: str, where: str) -> HostSpec:
    name, *tokens = line.split()
    check_host_name(name, where, HostfileError)
    slots: int | None = None
    max_slots: int | None = None
    for token in tokens:
        key, equals, value = token.partition("=")
        # Open MPI also accepts "slot=", "cpu=", "count=": we take the documented spellings only.
        if key == "slots" and equals:
            slots = _count(value, "slots", where)
        elif key == "max_slots" and equals:
            max_slots = _count(value, "max_slots", where)
        else:
            raise HostfileError(
                f"{where}: unknown token {quote(token)} after host {name!r}; "
                "a hostfile line is 'host slots=N [max_slots=M]'"
            )
    slots = 1 if slots is None else slots
    if max_slots is not None and max_slots < slots:
        raise HostfileError(f"{where}: max_slots={max_slots} is below slots={slots} for {name!r}; raise max_slots or drop it")
    return HostSpec(name=name, slots=slots, max_slots=max_slots, source=where)


def check_host_count(hosts: list[HostSpec], where: str) -> None:
    """Refuse more than ``MAX_HOSTS`` hosts: no real cluster has that many, a runaway file might."""
    if len(hosts) > MAX_HOSTS:
        raise HostfileError(f"{where}: more than {MAX_HOSTS} hosts; split the job or check the host list")


def check_unique(hosts: list[HostSpec]) -> None:
    """Refuse a host listed twice: the two slot counts would silently add up or override."""
    seen: dict[str, HostSpec] = {}
    for host in hosts:
        first = seen.get(host.name.lower())  # host names are case-insensitive: NODE1 is node1
        if first is not None:
            raise HostfileError(
                f"{host.source}: host {host.name!r} is already listed at {first.source}; "
                "list each host once with its total slots"
            )
        seen[host.name.lower()] = host


def parse_hostfile_text(text: str, source: str) -> list[HostSpec]:
    """Hosts of hostfile ``text``; ``source`` (the file name) prefixes every error and ``HostSpec.source``."""
    hosts: list[HostSpec] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            hosts.append(_parse_line(line, f"{source}:{number}"))
            check_host_count(hosts, f"{source}:{number}")
    if not hosts:
        raise HostfileError(f"{source}: no hosts in this hostfile; add lines like 'node1 slots=4'")
    check_unique(hosts)
    return hosts


def parse_hostfile(path: str | Path) -> list[HostSpec]:
    """Hosts of the Open MPI hostfile at ``path``."""
    path = Path(path)
    text = read_input_file(path, "hostfile", "--hostfile", "text file", HostfileError)
    return parse_hostfile_text(text, str(path))


def parse_host_list(text: str, source: str = "-H") -> list[HostSpec]:
    """Hosts of the short form ``a:4,b:2`` (a bare ``a`` is one slot)."""
    hosts: list[HostSpec] = []
    for index, item in enumerate(text.split(","), start=1):
        item = item.strip()
        where = f"{source} entry {index} ({quote(item)})"
        # A bare IPv6 address is all colons: take it whole (one slot); [::1]:2 gives it slots.
        if item.startswith("["):
            name, colon, count = _bracketed(item, where)
        else:
            name, colon, count = (item, "", "") if _is_ip(item) or ":" not in item else item.rpartition(":")
        if not name:
            raise HostfileError(f"{where}: empty host name; write -H host1:4,host2:4")
        check_host_name(name, where, HostfileError)
        slots = _count(count, "slots", where) if colon else 1
        hosts.append(HostSpec(name=name, slots=slots, source=f"{source} {name}"))
        check_host_count(hosts, source)
    check_unique(hosts)
    return hosts


def _bracketed(item: str, where: str) -> tuple[str, str, str]:
    """``[fd00::2]:4`` -> ("fd00::2", ":", "4"); ``[fd00::2]`` -> one slot. Only an IPv6 address
    goes in brackets, as in URLs and ssh."""
    address, bracket, rest = item[1:].partition("]")
    if not bracket or (rest and not rest.startswith(":")):
        raise HostfileError(f"{where}: write an IPv6 address with slots as [fd00::2]:4")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise HostfileError(f"{where}: {quote(address)} is not an IPv6 address; brackets are for IPv6 "
                            "addresses only ([fd00::2]:4)") from None
    return address, rest[:1], rest[1:]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def total_slots(hosts: list[HostSpec]) -> int:
    return sum(host.slots for host in hosts)


# The names Open MPI's launcher starts ranks for without ssh. Other loopback addresses (127.0.0.2)
# are not among them: mpirun reaches those over ssh like any remote host.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "127.0.0.1", "::1")


def is_local_host(name: str) -> bool:
    """True for names that mean this machine to mpirun (it starts those ranks without ssh); host
    names are case-insensitive, so LOCALHOST is one of them."""
    return name.lower() in _LOCAL_NAMES or name.lower() == socket.gethostname().lower()


def launches_over_ssh(host: HostSpec) -> bool:
    """Whether a job reaches ``host`` over ssh: every remote host, and a name of this machine whose
    entry sets an ssh port or user of its own (an sshd on 127.0.0.1:2222 in front of a container or
    a test node means "log in there", not "run here")."""
    return not is_local_host(host.name) or host.ssh_port is not None or host.ssh_user is not None


def mpirun_host_name(host: HostSpec) -> str:
    """The name mpirun is given for ``host``: its own name, except for a name of this machine that
    is reached over ssh, where mpirun would start the ranks locally and skip ssh, and for an IPv6
    address, which mpirun reads at its first colon (``--host fd00::2:4``: an empty host name).
    Those get an alias mpirun cannot take for this machine, which the generated ssh_config maps
    back to the host's address and port (``.invalid`` never resolves, RFC 6761)."""
    ipv6 = ":" in host.name  # check_host_name lets a colon through only in an IPv6 address
    if not launches_over_ssh(host):
        # mpirun recognises this machine by its exact spelling: LOCALHOST would go through ssh.
        name = host.name.lower()
        return ("localhost" if ipv6 else name) if name in _LOCAL_NAMES else socket.gethostname()
    if not is_local_host(host.name) and not ipv6:
        return host.name
    label = host.name.replace(".", "-").replace(":", "-")
    return f"asyncddp-{label}-port{host.ssh_port or 22}.invalid"


def rank_hosts(hosts: list[HostSpec], num_ranks: int) -> list[str]:
    """The host of each rank when mpirun maps by slot: fill each host's slots in order.

    Ranks beyond the slots (oversubscription) are spread evenly, the first hosts taking one more,
    as Open MPI's by-slot mapper does.
    """
    names = [host.name for host in hosts for _ in range(host.slots)][:num_ranks]
    extra = num_ranks - len(names)
    if extra <= 0:
        return names
    per_host, remainder = divmod(extra, len(hosts))
    counts = {host.name: host.slots + per_host + (1 if index < remainder else 0) for index, host in enumerate(hosts)}
    return [host.name for host in hosts for _ in range(counts[host.name])]
