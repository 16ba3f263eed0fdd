"""The lines a rank's side of a fault-tolerant job writes for the launcher to read.

In ``asyncddp run --fault-tolerant`` mpirun (ULFM) keeps quiet about lost ranks, so two reports
travel on the ranks' own stderr, through mpirun's tagged output, to ``asyncddp.launcher.survival``:

- ``rank_end_line``: written by ``asyncddp.launcher.rank_guard`` when its rank's process ends;
- ``report_lost_ranks``: called by a rank after its recovery shrank the world, naming the ranks
  the survivors left behind. A rank that hangs rather than dies never ends by itself and mpirun
  waits for it; once every other rank has ended, the launcher stops the ranks the survivors
  declared lost without waiting longer.

This module is imported on both sides and needs nothing but the standard library.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

__all__ = ["rank_end_line", "parse_rank_end", "report_lost_ranks", "parse_lost_ranks"]

END_MARKER = "asyncddp-rank-end:"
LOST_MARKER = "asyncddp-ranks-lost:"


def rank_end_line(rank: int, returncode: int) -> str:
    """The guard's report for ``rank`` whose process ended with ``returncode`` (negative: a signal)."""
    return f"{END_MARKER} rank={rank} returncode={returncode}"


def parse_rank_end(text: str) -> tuple[int, int] | None:
    """(rank, returncode) of a guard's report, None for any other line."""
    if not text.startswith(END_MARKER):
        return None
    try:
        fields = dict(item.split("=", 1) for item in text[len(END_MARKER):].split())
        return int(fields["rank"]), int(fields["returncode"])
    except (ValueError, KeyError):
        return None


def report_lost_ranks(ranks: Iterable[int]) -> None:
    """Tell the launcher of a fault-tolerant job that the survivors left ``ranks`` (ranks of the
    job's original world) behind; does nothing outside such a job."""
    ranks = sorted(set(int(rank) for rank in ranks))
    if ranks and os.environ.get("ASYNCDDP_FAULT_TOLERANT") == "1":
        print(f"{LOST_MARKER} {','.join(map(str, ranks))}", file=sys.stderr, flush=True)


def parse_lost_ranks(text: str) -> tuple[int, ...] | None:
    """The ranks of a ``report_lost_ranks`` line, None for any other line."""
    if not text.startswith(LOST_MARKER):
        return None
    try:
        return tuple(int(item) for item in text[len(LOST_MARKER):].strip().split(","))
    except ValueError:
        return None
