"""A training benchmark repeated over link bandwidths of an emulated cluster: where each method wins.

``bench MODEL --emulate nodes=4 --sweep-bandwidth 200mbit,1gbit,10gbit`` runs the same methods at
one rank count once per rate, each time on a fresh emulated cluster whose links (every node's,
except those given a rate of their own with ``slow_node``) run at that rate. The result keeps each
rate's whole ``ModelBenchResult``, so the table, the plot and ``--json`` derive from the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from asyncddp.bench.network import emulated_spec
from asyncddp.bench.results import ModelBenchOptions, ModelBenchResult, ModelRun
from asyncddp.errors import ConfigError
from asyncddp.launcher.emulate_spec import format_rate, parse_rate

if TYPE_CHECKING:
    from asyncddp.launcher.run_config import RunOptions

__all__ = ["SweepPoint", "BandwidthSweep", "parse_bandwidths", "require_emulated", "run_bandwidth_sweep"]

FLAG = "--sweep-bandwidth"


def parse_bandwidths(text: str) -> tuple[int, ...]:
    """``200mbit,1gbit,10gbit`` as distinct rates in bits/s, slowest first."""
    example = f"e.g. {FLAG} 200mbit,1gbit,10gbit"
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"{FLAG} {text!r}: give link rates separated by commas, {example}")
    rates = set()
    for part in parts:
        try:
            rates.add(parse_rate(part, FLAG))
        except ConfigError:
            raise ConfigError(f"{FLAG} {part!r} is not a rate of at least 8kbit; write a number and bit, kbit, "
                              f"mbit, gbit or tbit ('bps' would be bytes/s), {example}") from None
    return tuple(sorted(rates))


@dataclass(frozen=True)
class SweepPoint:
    """Every method's run at one link rate."""

    bandwidth_bps: int
    result: ModelBenchResult

    @property
    def bandwidth(self) -> str:
        return format_rate(self.bandwidth_bps)

    def to_dict(self) -> dict:
        return {"bandwidth_bps": self.bandwidth_bps, "bandwidth": self.bandwidth, "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "SweepPoint":
        return cls(bandwidth_bps=data["bandwidth_bps"], result=ModelBenchResult.from_dict(data["result"]))


@dataclass(frozen=True)
class BandwidthSweep:
    model: str
    num_ranks: int
    methods: tuple[str, ...]
    points: tuple[SweepPoint, ...]

    def run(self, method: str, bandwidth_bps: int) -> ModelRun | None:
        """``method``'s run at ``bandwidth_bps`` (failed runs too), or None if it was not run."""
        for point in self.points:
            if point.bandwidth_bps == bandwidth_bps:
                return next((run for run in point.result.runs if run.method == method), None)
        return None

    @property
    def num_runs(self) -> int:
        return sum(point.result.num_runs for point in self.points)

    def failures(self) -> tuple[str, ...]:
        """One line per failed run, at its rate (see ``asyncddp.bench.outcome``)."""
        return tuple(f"at {point.bandwidth}: {line}" for point in self.points for line in point.result.failures())

    def to_dict(self) -> dict:
        return {"model": self.model, "num_ranks": self.num_ranks, "methods": list(self.methods),
                "points": [point.to_dict() for point in self.points]}

    @classmethod
    def from_dict(cls, data: dict) -> "BandwidthSweep":
        return cls(model=data["model"], num_ranks=data["num_ranks"], methods=tuple(data["methods"]),
                   points=tuple(SweepPoint.from_dict(point) for point in data["points"]))


def require_emulated(launch: RunOptions):
    """The ``EmulateSpec`` a sweep varies; ConfigError when ``launch`` runs on real hosts."""
    spec = emulated_spec(launch)
    if spec is None:
        raise ConfigError(f"{FLAG} sets the links of an emulated cluster: add --emulate nodes=N "
                          "(or a config with emulate:)")
    return spec


def run_bandwidth_sweep(base: ModelBenchOptions, methods: tuple[str, ...], num_ranks: int,
                        rates: tuple[int, ...], launch: RunOptions,
                        on_progress: Callable[[dict], None] | None = None) -> BandwidthSweep:
    """``run_model_bench`` at ``num_ranks`` once per rate in ``rates`` (bits/s).

    ``launch`` must name an emulated cluster (``--emulate`` or a config's ``emulate:``); its
    ``bandwidth`` is replaced by each rate in turn, its other settings kept. ``on_progress`` gets
    ``run_model_bench``'s events with ``bandwidth`` and the totals over the whole sweep added.
    """
    from asyncddp.bench.runner import run_model_bench

    spec = require_emulated(launch)
    points = []
    for index, rate in enumerate(rates):
        at_rate = replace(launch, emulate=replace(spec, bandwidth_bps=rate).describe())

        def progress(event, index=index, rate=rate):
            if on_progress is not None:
                on_progress({**event, "bandwidth": format_rate(rate), "done": index * event["total"] + event["done"],
                             "total": len(rates) * event["total"]})

        points.append(SweepPoint(rate, run_model_bench(base, methods, (num_ranks,), at_rate, progress)))
    return BandwidthSweep(model=base.model, num_ranks=num_ranks, methods=methods, points=tuple(points))
