"""How a fault-tolerant job ends: which ranks were lost (where, when, how) and whether enough finished.

In a fault-tolerant job each rank runs under ``asyncddp.launcher.rank_guard``, which reports how
its rank ended on a line of the rank's stderr. ``RankEnds`` collects those reports as
``asyncddp.launcher.job`` reads mpirun's output, turning a lost rank's report into a readable line
and hiding a finished rank's; ``survival_result`` turns them into the job's result when mpirun is
done. A rank with no report was lost with its guard (its host died, or mpirun killed both first).

A rank that hangs (stopped, wedged) is found by ULFM's heartbeat detector and left behind by the
survivors, but mpirun cannot end the job while its process lives: the survivors wait for it in
``MPI_Finalize``. ``--timeout`` bounds such a job.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

from asyncddp.launcher.rank_guard import parse_rank_end

__all__ = ["LostRank", "RankEnds", "survival_result", "describe_returncode"]


def describe_returncode(returncode: int) -> str:
    """``killed by SIGKILL`` for a negative return code, ``exit code 3`` otherwise."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(frozen=True)
class LostRank:
    rank: int
    host: str | None
    at_s: float | None  # seconds into the job; None when its end was never reported
    how: str  # "killed by SIGKILL", "exit code 3", "no report (...)"
    exit_code: int  # what this loss would make the job exit with (128 + signal for a signal)

    def describe(self) -> str:
        when = f" at {self.at_s:.1f} s" if self.at_s is not None else ""
        return f"rank {self.rank} on {self.host}{when} ({self.how})"


class RankEnds:
    """The guards' reports of one job, fed line by line from mpirun's output threads."""

    def __init__(self, num_ranks: int, started: float) -> None:
        self.num_ranks = num_ranks
        self.started = started
        self.lock = threading.Lock()
        self.ends: dict[int, tuple[int, float]] = {}  # rank -> (returncode, seconds into the job)

    def note(self, rank: int, text: str) -> str | None:
        """None for an ordinary line; for a guard's report, the text to show instead ("" to hide)."""
        report = parse_rank_end(text)
        if report is None or report[0] != rank:
            return None
        now = time.monotonic()
        with self.lock:
            self.ends[rank] = (report[1], now - self.started)
        return "" if report[1] == 0 else f"asyncddp: rank {rank} lost: {describe_returncode(report[1])}"


def _lost(ends: RankEnds, rank_hosts: tuple[str, ...]) -> list[LostRank]:
    lost = []
    for rank in range(ends.num_ranks):
        host = rank_hosts[rank] if rank < len(rank_hosts) else None
        if rank in ends.ends:
            code, at = ends.ends[rank]
            if code != 0:
                lost.append(LostRank(rank, host, round(at, 1), describe_returncode(code), 128 - code if code < 0 else code))
        else:
            lost.append(LostRank(rank, host, None, "no report: lost with its guard, or its host was lost", 1))
    return lost


def survival_result(ends: RankEnds, rank_hosts: tuple[str, ...], min_ranks: int | None):
    """(exit code, summary, lost ranks) of a fault-tolerant job whose mpirun has ended: 0 when at
    least ``min_ranks`` (default 1) ranks finished; otherwise the first lost rank's code."""
    lost = _lost(ends, rank_hosts)
    finished = ends.num_ranks - len(lost)
    needed = min_ranks or 1
    names = "; ".join(item.describe() for item in lost)
    if finished >= needed and not lost:
        return 0, "", lost
    if finished >= needed:
        return 0, (f"asyncddp: job finished on {finished} of {ends.num_ranks} ranks; "
                   f"lost {len(lost)}: {names}"), lost
    want = f" (--min-ranks {min_ranks})" if min_ranks else ""
    first = min(lost, key=lambda item: (item.at_s is None, item.at_s or 0.0))
    return first.exit_code, (f"asyncddp: job failed: {finished} of {ends.num_ranks} ranks finished, "
                             f"{needed} needed{want}; lost {len(lost)}: {names}"), lost
