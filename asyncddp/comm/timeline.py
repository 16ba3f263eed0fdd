"""Chrome-trace timeline of every communication op, one file for the whole job.

``ASYNCDDP_TIMELINE=path.json`` (what ``asyncddp run --timeline path.json`` sets) makes each rank
record one complete ("X") event per op it executes: name, kind, bytes, peers, start and end in
microseconds of wall-clock time (comparable across ranks on one host; roughly across hosts).
At ``shutdown()`` rank 0 gathers every rank's events over MPI and writes a single JSON file with
``pid = rank``, which chrome://tracing and https://ui.perfetto.dev open directly. This module
imports no MPI: the communicator is passed in by the engine that owns it.

A script that ends without ``shutdown()`` (it returns, calls ``sys.exit``, raises) still leaves its
events: at exit each rank writes its own, with no MPI (another rank may be gone already, so a
collective would hang). Under ``asyncddp run`` they go to the job's private folder
(``ASYNCDDP_TIMELINE_PARTS``, set for jobs on this machine) and the launcher merges the ranks it
finds into the one file when the job ends (``merge_parts``). Without it, a job of one rank writes
the file itself and a rank of a larger job writes ``PATH.rankN.json``, its own trace.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from pathlib import Path

from asyncddp.comm.env import env_value

__all__ = ["TIMELINE_ENV", "PARTS_ENV", "Timeline", "timeline_path_from_env", "merged_trace", "write_trace",
           "merge_parts", "write_armed"]

TIMELINE_ENV = "ASYNCDDP_TIMELINE"
PARTS_ENV = "ASYNCDDP_TIMELINE_PARTS"  # the launcher's folder for the events of ranks that skip shutdown()


def timeline_path_from_env() -> Path | None:
    return env_value(TIMELINE_ENV, None, Path, "a file path")


def now_us() -> float:
    return time.time_ns() / 1000.0


class Timeline:
    """Per-rank event recorder; ``write_merged`` is collective over the communicator given."""

    def __init__(self, path: Path, rank: int, size: int = 0, *, at_exit: bool = False) -> None:
        self.path = Path(path)
        self.rank = rank
        self.size = size  # ranks in the job; 0 when unknown
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self.written = False
        if at_exit:
            if not _armed:
                atexit.register(write_armed)
            _armed.append(self)

    def record(
        self, name: str, kind: str, start_us: float, end_us: float, nbytes: int, peers=()
    ) -> None:
        event = {
            "name": name,
            "cat": kind,
            "ph": "X",
            "ts": round(start_us, 3),
            "dur": round(max(end_us - start_us, 0.0), 3),
            "pid": self.rank,
            "tid": 0,
            "args": {"op": kind, "bytes": int(nbytes), "peers": [int(p) for p in peers]},
        }
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def write_merged(self, comm) -> Path | None:
        """Gather every rank's events to rank 0 and write one trace file there. Collective."""
        self.written = True
        gathered = comm.gather(self.events, root=0)
        if comm.Get_rank() != 0:
            return None
        return write_trace(self.path, merged_trace(dict(enumerate(gathered))))

    def write_at_exit(self) -> Path | None:
        """This rank's events, without MPI, when the program ends without ``shutdown()``."""
        if self.written:
            return None
        self.written = True
        parts = os.environ.get(PARTS_ENV)
        try:
            if parts:
                Path(parts).mkdir(mode=0o700, exist_ok=True)
                return _write_json(Path(parts) / f"rank{self.rank}.json", {"rank": self.rank, "events": self.events})
            path = self.path if self.size == 1 else self.path.with_name(f"{self.path.name}.rank{self.rank}.json")
            return write_trace(path, merged_trace({self.rank: self.events}))
        except OSError as error:  # at exit: say so, but never turn the program's exit into a traceback
            print(f"asyncddp: rank {self.rank} could not write its timeline ({error})", file=sys.stderr, flush=True)
            return None


_armed: list[Timeline] = []  # recorders whose events are written at exit unless shutdown() wrote them


def write_armed() -> None:
    """Each armed recorder's events, at exit or just before an abort (which skips ``atexit``)."""
    while _armed:
        _armed.pop(0).write_at_exit()


def merged_trace(events_by_rank: dict[int, list[dict]]) -> dict:
    """One Chrome trace of the ranks' events: each rank a process named and sorted by its number."""
    trace = []
    for rank in sorted(events_by_rank):
        trace.append({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}})
        trace.append({"name": "process_sort_index", "ph": "M", "pid": rank, "args": {"sort_index": rank}})
    for rank in sorted(events_by_rank):
        trace.extend(events_by_rank[rank])
    return {"traceEvents": trace, "displayTimeUnit": "ms"}


def write_trace(path: Path, trace: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_json(path, trace)


def _write_json(path: Path, data) -> Path:
    # Written whole, then renamed: a reader never sees half a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return path


def merge_parts(parts: Path, path: Path) -> tuple[Path | None, list[int]]:
    """The per-rank files in ``parts`` merged into ``path``: (path or None when there were none,
    the ranks found). Unreadable parts (a rank killed while writing) are skipped."""
    found: dict[int, list[dict]] = {}
    for part in sorted(Path(parts).glob("rank*.json")):
        try:
            data = json.loads(part.read_text())
            found[int(data["rank"])] = list(data["events"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not found:
        return None, []
    return write_trace(path, merged_trace(found)), sorted(found)
