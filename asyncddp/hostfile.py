"""Hosts and their slots: Open MPI hostfiles and the ``-H host:N,...`` short form.

(Parsers are being written; ``HostSpec`` is the shared record every other module uses.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["HostSpec"]


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

    def to_dict(self) -> dict:
        return asdict(self)
