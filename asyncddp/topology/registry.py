"""The one table of topology names (``exp2``, ``ring``, ``ceca``, ...) used by the library and CLI.

Static entries build an ``nx.DiGraph``; dynamic entries build per-rank schedules. Both give a
schedule factory ``factory(n, rank=r)`` (a static graph repeats the same step), which is what
``simulate_consensus`` and ``asyncddp topology compare`` run.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx

from asyncddp.errors import TopologyError
from asyncddp.topology import ceca, equitopo, graphs, schedules

__all__ = ["TopologyEntry", "TOPOLOGIES", "topology_names", "get_topology", "build_graph", "schedule_factory"]


@dataclass(frozen=True)
class TopologyEntry:
    """One named topology: ``kind`` is ``"static"`` or ``"dynamic"``."""

    name: str
    kind: str
    builder: Callable
    summary: str
    preset: dict = field(default_factory=dict)

    def parameters(self) -> list[str]:
        """Keyword parameters the builder takes besides ``n`` and ``rank``."""
        names = inspect.signature(self.builder).parameters
        return [p for p in names if p not in ("n", "rank") and p not in self.preset]

    def check_params(self, params: dict, ignore_unknown: bool = False) -> dict:
        accepted = self.parameters()
        unknown = sorted(set(params) - set(accepted))
        if unknown and not ignore_unknown:
            raise TopologyError(
                f"topology {self.name!r} takes no parameter {', '.join(unknown)}; "
                f"it accepts: {', '.join(accepted) or 'none'}"
            )
        kwargs = {**self.preset, **{k: v for k, v in params.items() if k in accepted}}
        signature = inspect.signature(self.builder).parameters
        missing = [p for p in accepted if signature[p].default is inspect.Parameter.empty and p not in kwargs]
        if missing:
            raise TopologyError(
                f"topology {self.name!r} needs {', '.join(missing)} "
                f"(CLI: -p {missing[0]}=VALUE)"
            )
        return kwargs

    def graph(self, n: int, ignore_unknown: bool = False, **params) -> nx.DiGraph:
        """The static graph on n nodes (``TopologyError`` for a dynamic entry)."""
        if self.kind != "static":
            raise TopologyError(f"{self.name!r} is a dynamic schedule, not a static graph")
        return self.builder(n, **self.check_params(params, ignore_unknown))

    def factory(self, ignore_unknown: bool = False, **params) -> Callable:
        """``factory(n, rank=r)`` giving rank r's infinite iterator of ``NeighborStep``."""
        kwargs = self.check_params(params, ignore_unknown)
        if self.kind == "dynamic":
            return functools.partial(self.builder, **kwargs)

        @functools.lru_cache(maxsize=4)
        def graph_of(n: int) -> nx.DiGraph:
            return self.builder(n, **kwargs)

        return lambda n, rank: schedules.static_schedule(graph_of(n), rank)

    def period(self, n: int, ignore_unknown: bool = False, **params) -> int | None:
        """Steps after which the schedule repeats (1 for static graphs, None for random ones)."""
        kwargs = self.check_params(params, ignore_unknown)
        if self.kind == "static":
            return 1
        if self.builder in (schedules.one_peer_exponential_two, ceca.ceca_schedule):
            return max(1, schedules.exp2_period(n))
        if self.builder is schedules.inner_outer_exponential_two:
            local_size = kwargs.get("local_size")
            if not isinstance(local_size, int) or local_size < 1 or n % local_size:
                return None
            machines, inner = n // local_size, local_size - 1
            parts = [local_size, max(1, schedules.exp2_period(machines))]
            if inner > 1:
                parts.append(schedules.exp2_period(inner))
            return math.lcm(*parts)
        return None


def _entries() -> dict[str, TopologyEntry]:
    g, s, e = graphs, schedules, equitopo
    table = [
        TopologyEntry("exp2", "static", g.exponential_two_graph, "static Exponential-2: i sends to i+2^k"),
        TopologyEntry("exp", "static", g.exponential_graph, "static exponential graph with a base"),
        TopologyEntry("sym-exp", "static", g.symmetric_exponential_graph, "symmetric exponential (base 4)"),
        TopologyEntry("ring", "static", g.ring_graph, "ring (bidirectional, left or right)"),
        TopologyEntry("mesh", "static", g.mesh_grid_2d_graph, "2-D grid, Metropolis-Hastings weights"),
        TopologyEntry("star", "static", g.star_graph, "star around center_rank"),
        TopologyEntry("full", "static", g.fully_connected_graph, "fully connected, exact in one step"),
        TopologyEntry("hypercube", "static", g.hypercube_graph, "hypercube (n a power of two)"),
        TopologyEntry("equi-static", "static", e.equi_static_graph, "D-EquiStatic, random offsets"),
        TopologyEntry(
            "u-equi-static", "static", e.equi_static_graph, "U-EquiStatic (symmetrised)", {"undirected": True}
        ),
        TopologyEntry("one-peer-exp2", "dynamic", s.one_peer_exponential_two, "one-peer Exponential-2"),
        TopologyEntry(
            "inner-outer-exp2", "dynamic", s.inner_outer_exponential_two, "BlueFog inner/outer one-peer Exp-2"
        ),
        TopologyEntry("ceca", "dynamic", ceca.ceca_schedule, "DSGD-CECA: exact after ceil(log2 n) steps"),
        TopologyEntry("equi-dyn", "dynamic", e.equi_dyn_schedule, "OD-EquiDyn, one random peer per step"),
        TopologyEntry(
            "ou-equi-dyn", "dynamic", e.equi_dyn_schedule, "OU-EquiDyn, random matching", {"undirected": True}
        ),
    ]
    return {entry.name: entry for entry in table}


TOPOLOGIES: dict[str, TopologyEntry] = _entries()


def topology_names(kind: str | None = None) -> list[str]:
    """Registered names, in table order; ``kind`` = ``"static"`` or ``"dynamic"`` filters."""
    return [name for name, entry in TOPOLOGIES.items() if kind in (None, entry.kind)]


def get_topology(name: str) -> TopologyEntry:
    """The entry for ``name``; ``TopologyError`` listing the valid names otherwise."""
    entry = TOPOLOGIES.get(str(name).strip().lower())
    if entry is None:
        raise TopologyError(f"unknown topology {name!r}; valid names: {', '.join(TOPOLOGIES)}")
    return entry


def build_graph(name: str, n: int, **params) -> nx.DiGraph:
    """The static graph registered as ``name`` on n nodes."""
    return get_topology(name).graph(n, **params)


def schedule_factory(name: str, **params) -> Callable:
    """``factory(n, rank=r)`` for any registered name (static graphs repeat one step)."""
    return get_topology(name).factory(**params)
