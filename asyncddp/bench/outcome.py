"""Whether a benchmark did all it was asked: the one rule every ``asyncddp bench`` command ends by.

A bench runs one job or many (one per method and rank count, per link rate, per method losing a
rank); a job that fails becomes a row with its error so that the others still report. The command
must not then look like a success: ``outcome_of(result)`` counts the runs asked for and lists the
failed ones, ``--json`` carries that at the top of the document (``status`` ``ok`` or ``error``,
``exit_code``, ``num_runs``, ``num_failed``, ``failed``, ``missed_bound``), and ``check`` raises
``RunsFailed`` (exit 2) once the result is printed; a bound the user set and the result missed
(``bench comm --min-busbw``) is exit 1 when every run succeeded. A result type takes part with ``num_runs`` and
``failures()`` (one line per failed run); its ``from_dict`` drops ``KEYS`` so that the printed
document loads back.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncddp.bench.errors import BandwidthBelowBound, BenchError

__all__ = ["KEYS", "BenchOutcome", "RunsFailed", "outcome_of", "document", "check", "without_outcome"]

KEYS = ("status", "exit_code", "num_runs", "num_failed", "failed", "missed_bound")
_MESSAGE_LIMIT = 400


class RunsFailed(BenchError):
    """A bench ran and printed its result, but some of the runs it was asked for failed."""


@dataclass(frozen=True)
class BenchOutcome:
    num_runs: int
    failed: tuple[str, ...] = ()  # one line per failed run, saying which and why
    missed_bound: str | None = None  # "average busbw 0.1 GB/s is below --min-busbw 5"

    @property
    def status(self) -> str:
        return "ok" if self.exit_code == 0 else "error"  # as the document of a command that could not run

    @property
    def exit_code(self) -> int:
        if self.failed:
            return RunsFailed.exit_code
        return BandwidthBelowBound.exit_code if self.missed_bound else 0

    def to_dict(self) -> dict:
        return {"status": self.status, "exit_code": self.exit_code, "num_runs": self.num_runs,
                "num_failed": len(self.failed), "failed": list(self.failed), "missed_bound": self.missed_bound}

    def message(self, what: str) -> str:
        """One line: how many of the runs failed, and the first reasons."""
        reasons = "; ".join(self.failed)
        if len(reasons) > _MESSAGE_LIMIT:
            reasons = reasons[:_MESSAGE_LIMIT - 3] + "..."
        return f"{what}: {len(self.failed)} of {self.num_runs} requested runs failed: {reasons}"


def outcome_of(result, missed_bound: str | None = None) -> BenchOutcome:
    """``result``'s outcome; TypeError for a result type that does not say which runs failed."""
    failures = getattr(result, "failures", None)
    if failures is None:
        raise TypeError(f"{type(result).__name__} has no failures(): every bench result must say which runs failed")
    return BenchOutcome(num_runs=result.num_runs, failed=tuple(failures()), missed_bound=missed_bound)


def document(result, missed_bound: str | None = None) -> dict:
    """What ``--json`` prints: the outcome first, then the result."""
    return {**outcome_of(result, missed_bound).to_dict(), **result.to_dict()}


def without_outcome(data: dict) -> dict:
    """A printed document without the outcome's keys, for a result's ``from_dict``."""
    return {key: value for key, value in data.items() if key not in KEYS}


def check(result, what: str, missed_bound: str | None = None) -> None:
    """``RunsFailed`` naming ``what`` (``bench mlp``) when any requested run of ``result`` failed,
    else ``BandwidthBelowBound`` when it missed a bound."""
    outcome = outcome_of(result, missed_bound)
    if outcome.failed:
        raise RunsFailed(outcome.message(what))
    if missed_bound:
        raise BandwidthBelowBound(f"{what}: {missed_bound}")
