"""The network a benchmark ran on, recorded beside its figures.

A figure taken on an emulated cluster means nothing without the links it ran over, and a node
given its own rate (``slow_node=2:200mbit``) changes every method differently, so each result
carries a ``BenchNetwork``: the ``--emulate`` spec written back, and every node's link rate with
the ranks it holds. ``emulated_spec`` reads the spec the launch will use (``--emulate`` over the
config's ``emulate:``), which is also where the benchmarks take their default rank count from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from asyncddp.launcher.emulate_spec import EmulateSpec, format_rate, parse_emulate_spec

if TYPE_CHECKING:
    from asyncddp.launcher.run_config import RunOptions

__all__ = ["NodeLink", "BenchNetwork", "emulated_spec", "default_num_ranks", "network_of"]


@dataclass(frozen=True)
class NodeLink:
    """One emulated node: its index, its ranks (mpirun fills nodes in order) and its link rate."""

    node: int
    ranks: tuple[int, ...]
    rate_bps: int | None  # None: unshaped

    @property
    def rate(self) -> str:
        return format_rate(self.rate_bps) if self.rate_bps is not None else "unshaped"

    def to_dict(self) -> dict:
        return {"node": self.node, "ranks": list(self.ranks), "rate_bps": self.rate_bps, "rate": self.rate}

    @classmethod
    def from_dict(cls, data: dict) -> "NodeLink":
        return cls(node=data["node"], ranks=tuple(data["ranks"]), rate_bps=data["rate_bps"])


@dataclass(frozen=True)
class BenchNetwork:
    """An emulated cluster as a result records it (``spec`` in ``--emulate`` syntax)."""

    spec: str
    num_nodes: int
    ranks_per_node: int
    latency_s: float
    loss_percent: float
    nodes: tuple[NodeLink, ...]

    @classmethod
    def of(cls, spec: EmulateSpec, num_ranks: int) -> "BenchNetwork":
        per = spec.ranks_per_node
        nodes = tuple(NodeLink(index, tuple(r for r in range(index * per, (index + 1) * per) if r < num_ranks),
                               spec.node_rate(index)) for index in range(spec.num_nodes))
        return cls(spec.describe(), spec.num_nodes, per, spec.latency_s, spec.loss_percent, nodes)

    def describe(self) -> str:
        """One line: the spec, then each distinct rate with the nodes that have it."""
        by_rate: dict[str, list[int]] = {}
        for link in self.nodes:
            by_rate.setdefault(link.rate, []).append(link.node)
        links = "; ".join(f"node{'s' if len(nodes) > 1 else ''} {','.join(map(str, nodes))} {rate}"
                          for rate, nodes in by_rate.items())
        return f"emulated cluster {self.spec} (links: {links})"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["nodes"] = [link.to_dict() for link in self.nodes]
        return data

    @classmethod
    def from_dict(cls, data: dict | None) -> "BenchNetwork | None":
        if data is None:
            return None
        return cls(**{**data, "nodes": tuple(NodeLink.from_dict(link) for link in data["nodes"])})


def emulated_spec(launch: RunOptions) -> EmulateSpec | None:
    """The emulated cluster ``launch`` will run on (``--emulate`` over the config's), or None."""
    if launch.emulate is not None:
        return parse_emulate_spec(launch.emulate)
    if launch.config:
        from asyncddp.launcher.config import load_config

        return load_config(launch.config).emulate
    return None


def default_num_ranks(launch: RunOptions, fallback):
    """The rank count of a bench given no ``-np``: every slot of the emulated cluster, else ``fallback``."""
    spec = emulated_spec(launch)
    return spec.num_ranks if spec is not None else fallback


def network_of(launch: RunOptions, num_ranks: int) -> BenchNetwork | None:
    """What a result records about the network ``launch`` runs ``num_ranks`` ranks on."""
    spec = emulated_spec(launch)
    return BenchNetwork.of(spec, num_ranks) if spec is not None else None
