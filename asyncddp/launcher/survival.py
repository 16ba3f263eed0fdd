"""How a fault-tolerant job ends: which ranks were lost (where, when, how) and whether enough finished.

In a fault-tolerant job each rank runs under ``asyncddp.launcher.rank_guard``, which reports how
its rank ended on a line of the rank's stderr (``asyncddp.comm.rank_report``). ``RankEnds`` collects
those reports as ``asyncddp.launcher.job`` reads mpirun's output, turning a lost rank's report into
a readable line and hiding a finished rank's; ``survival_result`` turns them into the job's result
when mpirun is done. A rank with no report was lost with its guard (its host died, or mpirun
killed both first).

A rank that hangs (stopped, wedged) is found by ULFM's heartbeat detector (when turned on) and left behind by the
survivors, but its process never ends and mpirun waits for it. So the ranks still running are
stopped at once when the survivors declared them all lost (``report_lost_ranks``), and otherwise
``LINGER_S`` after the last rank that finished did (a rank may legitimately finish last, writing a
checkpoint; a rank that was lost starts no clock, since the survivors go on training).
The ranks leave without ``MPI_Finalize`` (the plan turns mpi4py's off): Open MPI's finalize waits,
through its runtime, for every rank of the job, a hung one included.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

from asyncddp.comm.rank_report import parse_lost_ranks, parse_rank_end

__all__ = ["LostRank", "RankEnds", "survival_result", "describe_returncode", "LINGER_S"]

LINGER_S = 60.0


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
    how: str  # "killed by SIGKILL", "exit code 3", "hung (...)", "no report (...)"
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
        self.declared: dict[int, float] = {}  # rank the survivors left behind -> seconds into the job
        self.last_end: float | None = None
        self.last_finish: float | None = None  # the last rank that ended with code 0
        self.stopped: tuple[int, ...] = ()  # the ranks the launcher stopped because they never ended

    def note(self, rank: int, text: str) -> str | None:
        """None for an ordinary line; for a guard's report, the text to show instead ("" to hide)."""
        now = time.monotonic()
        # Open MPI puts a NUL before the first line a rank writes after one of its own help
        # messages (seen after the "not tested for post-failure operation" warning).
        text = text.strip(" \t\x00")
        declared = parse_lost_ranks(text)
        if declared is not None:
            with self.lock:
                for lost in declared:
                    self.declared.setdefault(lost, now - self.started)
            return ""
        report = parse_rank_end(text)
        if report is None or report[0] != rank:
            return None
        with self.lock:
            self.ends[rank] = (report[1], now - self.started)
            self.last_end = now
            if report[1] == 0:
                self.last_finish = now
        return "" if report[1] == 0 else f"asyncddp: rank {rank} lost: {describe_returncode(report[1])}"

    def lingering(self, now: float) -> tuple[int, ...]:
        """The ranks to stop now, () if none: those still running when the survivors declared
        all of them lost, or ``LINGER_S`` after the last rank that finished did. The clock runs
        from a finished rank, not a lost one: after a loss the survivors go on training, for as
        long as they need."""
        with self.lock:
            missing = tuple(rank for rank in range(self.num_ranks) if rank not in self.ends)
            if not missing or self.last_end is None:
                return ()
            if all(rank in self.declared for rank in missing):
                return missing
            if self.last_finish is not None and now - self.last_finish > LINGER_S:
                return missing
            return ()


def _lost(ends: RankEnds, rank_hosts: tuple[str, ...]) -> list[LostRank]:
    lost = []
    for rank in range(ends.num_ranks):
        host = rank_hosts[rank] if rank < len(rank_hosts) else None
        if rank in ends.stopped:  # before its report: stopping it made its guard report a signal
            when = ends.declared.get(rank)
            why = (f"hung: left behind by the survivors at {when:.1f} s" if when is not None
                   else f"hung: still running {LINGER_S:g} s after the others ended")
            lost.append(LostRank(rank, host, None, f"{why}; stopped", 1))
        elif rank in ends.ends:
            code, at = ends.ends[rank]
            if code != 0:
                lost.append(LostRank(rank, host, round(at, 1), describe_returncode(code), 128 - code if code < 0 else code))
        else:
            lost.append(LostRank(rank, host, None, "no report: lost with its guard, or its host was lost", 1))
    return lost


def survival_result(ends: RankEnds, rank_hosts: tuple[str, ...], min_ranks: int | None):
    """(exit code, summary, lost ranks in rank order, the rank whose loss sets the code or None) of
    a fault-tolerant job whose mpirun has ended: 0 when at least ``min_ranks`` (default 1) ranks
    finished; otherwise the code of the rank lost first."""
    lost = _lost(ends, rank_hosts)
    finished = ends.num_ranks - len(lost)
    needed = min_ranks or 1
    names = "; ".join(item.describe() for item in lost)
    if finished >= needed and not lost:
        return 0, "", lost, None
    if finished >= needed:
        return 0, (f"asyncddp: job finished on {finished} of {ends.num_ranks} ranks; "
                   f"lost {len(lost)}: {names}"), lost, None
    want = f" (--min-ranks {min_ranks})" if min_ranks else ""
    first = min(lost, key=lambda item: (item.at_s is None, item.at_s or 0.0))
    return first.exit_code, (f"asyncddp: job failed: {finished} of {ends.num_ranks} ranks finished, "
                             f"{needed} needed{want}; lost {len(lost)}: {names}"), lost, first
