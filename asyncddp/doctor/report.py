"""The results of ``asyncddp doctor``: one ``CheckResult`` per check, grouped per node and for the cluster.

These are the frozen dataclasses the library returns and ``--json`` prints. ``DoctorReport.exit_code``
is the command's exit status: 0 all ok, 1 warnings only, 2 at least one failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncddp.launcher.check_result import FAIL, OK, WARN, CheckResult

__all__ = ["OK", "WARN", "FAIL", "CheckResult", "NodeReport", "DoctorReport"]

_RANK = {OK: 0, WARN: 1, FAIL: 2}


def worst(statuses) -> str:
    """The most severe of some statuses (ok when there are none)."""
    return max(statuses, key=_RANK.__getitem__, default=OK)


@dataclass(frozen=True)
class NodeReport:
    """Everything doctor learnt about one host: its checks and the raw probe output (None if unreached)."""

    host: str
    source: str
    checks: tuple[CheckResult, ...]
    probe: dict | None = None
    elapsed_s: float = 0.0

    @property
    def status(self) -> str:
        return worst(check.status for check in self.checks)

    def check(self, name: str) -> CheckResult | None:
        return next((check for check in self.checks if check.name == name), None)

    def to_dict(self) -> dict:
        return {
            "host": self.host,
            "source": self.source,
            "status": self.status,
            "elapsed_s": round(self.elapsed_s, 3),
            "checks": [check.to_dict() for check in self.checks],
            "probe": self.probe,
        }


@dataclass(frozen=True)
class DoctorReport:
    """The whole run: per-node reports, cross-node checks and the suggested subnet for ``run``."""

    nodes: tuple[NodeReport, ...]
    cluster: tuple[CheckResult, ...] = ()
    shared_subnet: str | None = None
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return worst([node.status for node in self.nodes] + [c.status for c in self.cluster])

    @property
    def exit_code(self) -> int:
        return _RANK[self.status]

    def counts(self) -> dict[str, int]:
        counts = {OK: 0, WARN: 0, FAIL: 0}
        for check in [c for node in self.nodes for c in node.checks] + list(self.cluster):
            counts[check.status] += 1
        return counts

    def verdict(self) -> str:
        """One line: how many nodes and checks, and whether a job can be launched."""
        counts = self.counts()
        word = {OK: "ready to launch", WARN: "can launch, see warnings", FAIL: "NOT ready"}
        return (
            f"{word[self.status]}: {len(self.nodes)} node(s), {sum(counts.values())} checks, "
            f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail "
            f"in {self.elapsed_s:.1f} s"
        )

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "verdict": self.verdict(),
            "elapsed_s": round(self.elapsed_s, 3),
            "shared_subnet": self.shared_subnet,
            "counts": self.counts(),
            "nodes": [node.to_dict() for node in self.nodes],
            "cluster": [check.to_dict() for check in self.cluster],
        }
