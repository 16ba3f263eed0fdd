"""What ``asyncddp topology show`` and ``compare`` print: typed results with ``to_dict()``.

``describe_topology`` summarises one registered topology on n ranks (neighbours and weights per
rank, consensus rate, stochasticity); ``compare_topologies`` runs several through
``simulate_consensus`` from the same start. Dynamic schedules are measured over one period (or
``ceil(log2 n)`` steps for random ones): their ``rho`` is ``||X_T - 11^T/n||_2`` with ``X_T`` the
product of the T step matrices, and ``rate_per_step = rho**(1/T)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from asyncddp.errors import TopologyError
from asyncddp.topology import analysis, schedules
from asyncddp.topology.registry import get_topology
from asyncddp.topology.simulate import consensus_states, simulate_consensus, step_matrix

__all__ = ["TopologyReport", "Comparison", "describe_topology", "compare_topologies", "check_report_size", "EXACT_TOL",
           "MAX_REPORT_RANKS", "MAX_REPORT_STEPS"]

# An error below this counts as exact consensus (float64 rounding of averages of n <= 10^4 values).
EXACT_TOL = 1e-9
# Reports work on dense n x n matrices (spectra, products of steps): 512 ranks take seconds, 2048
# most of a minute, so a mistyped -n is refused instead of running for hours.
MAX_REPORT_RANKS = 1024
MAX_REPORT_STEPS = 1000


def check_report_size(n, steps=None, flag: str = "--steps") -> None:
    """Refuse more ranks or steps than a report (or drawing) can work through in seconds."""
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_REPORT_RANKS:
        raise TopologyError(f"-n {n}: topology reports analyse dense n x n matrices; give at most "
                            f"{MAX_REPORT_RANKS} ranks")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or not 0 <= steps <= MAX_REPORT_STEPS):
        raise TopologyError(f"{flag} {steps}: give a whole number of steps from 0 to {MAX_REPORT_STEPS}")


@dataclass(frozen=True)
class TopologyReport:
    """One topology on n ranks: per-rank neighbours and weights plus consensus figures."""

    name: str
    kind: str
    n: int
    params: dict
    period: int | None
    steps_measured: int
    rho: float
    rate_per_step: float
    doubly_stochastic: bool | None
    regular: bool | None
    degrees: dict
    ranks: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Relative consensus error after each step (entry 0 is the start, 1.0) per topology."""

    n: int
    steps: int
    params: dict
    errors: dict[str, list[float]]
    steps_to_exact: dict[str, int | None]

    def to_dict(self) -> dict:
        return asdict(self)


def _first_exact(errors) -> int | None:
    hits = np.nonzero(np.asarray(errors) < EXACT_TOL)[0]
    return int(hits[0]) if hits.size else None


def _static_report(entry, n: int, params: dict) -> TopologyReport:
    graph = entry.graph(n, **params)
    rho = analysis.consensus_rate(graph)
    ranks = []
    for rank in range(n):
        self_weight, src_weights = analysis.recv_weights(graph, rank)
        ranks.append({
            "rank": rank,
            "send_ranks": analysis.out_neighbors(graph, rank),
            "recv_ranks": list(src_weights),
            "self_weight": self_weight,
            "src_weights": {str(j): w for j, w in src_weights.items()},
        })
    return TopologyReport(
        entry.name, "static", n, params, 1, 1, rho, rho, analysis.is_doubly_stochastic(graph),
        analysis.is_regular(graph), analysis.degree_stats(graph).to_dict(), ranks,
    )


def _dynamic_report(entry, n: int, params: dict, steps: int | None) -> TopologyReport:
    period = entry.period(n, **params)
    count = steps or period or max(1, schedules.exp2_period(n))
    factory = entry.factory(**params)
    iterators = [factory(n, rank=r) for r in range(n)]
    per_step = [[next(it) for it in iterators] for _ in range(count)]
    *_, product = consensus_states(factory, n, count)
    rho = float(np.linalg.norm(product - np.full((n, n), 1.0 / n), 2))
    has_aux = any(s.has_aux for step in per_step for s in step)
    stochastic = None if has_aux else all(analysis.is_doubly_stochastic(step_matrix(s)) for s in per_step)
    degrees = {
        "max_send_per_step": max(len(s.send_ranks) for step in per_step for s in step),
        "max_recv_per_step": max(len(s.recv_ranks) for step in per_step for s in step),
    }
    ranks = [{"rank": r, "steps": [per_step[k][r].to_dict() for k in range(count)]} for r in range(n)]
    return TopologyReport(
        entry.name, "dynamic", n, params, period, count, rho, rho ** (1.0 / count), stochastic,
        None, degrees, ranks,
    )


def describe_topology(name: str, n: int, steps: int | None = None, **params) -> TopologyReport:
    """Summarise the registered topology ``name`` on n ranks (``steps`` only for dynamic ones)."""
    check_report_size(n, steps)
    entry = get_topology(name)
    if entry.kind == "static":
        return _static_report(entry, n, params)
    return _dynamic_report(entry, n, params, steps)


def compare_topologies(names: list[str], n: int, steps: int, x0=None, **params) -> Comparison:
    """Consensus error per step for each name, all from the same ``x0`` (default: identity).

    ``params`` go to every topology that accepts them (e.g. ``seed``, ``local_size``).
    """
    check_report_size(n, steps)
    errors, exact = {}, {}
    for name in names:
        entry = get_topology(name)
        factory = entry.factory(ignore_unknown=True, **params)
        trace = simulate_consensus(factory, n, steps, x0)
        errors[entry.name] = [float(e) for e in trace]
        exact[entry.name] = _first_exact(trace)
    return Comparison(n, steps, params, errors, exact)
