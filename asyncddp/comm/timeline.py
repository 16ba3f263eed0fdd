"""Chrome-trace timeline of every communication op, one file for the whole job.

``ASYNCDDP_TIMELINE=path.json`` (what ``asyncddp run --timeline path.json`` sets) makes each rank
record one complete ("X") event per op it executes: name, kind, bytes, peers, start and end in
microseconds of wall-clock time (comparable across ranks on one host; roughly across hosts).
At ``shutdown()`` rank 0 gathers every rank's events over MPI and writes a single JSON file with
``pid = rank``, which chrome://tracing and https://ui.perfetto.dev open directly. This module
imports no MPI: the communicator is passed in by the engine that owns it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from asyncddp.comm.env import env_value

__all__ = ["TIMELINE_ENV", "Timeline", "timeline_path_from_env"]

TIMELINE_ENV = "ASYNCDDP_TIMELINE"


def timeline_path_from_env() -> Path | None:
    return env_value(TIMELINE_ENV, None, Path, "a file path")


def now_us() -> float:
    return time.time_ns() / 1000.0


class Timeline:
    """Per-rank event recorder; ``write_merged`` is collective over the communicator given."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path = Path(path)
        self.rank = rank
        self._events: list[dict] = []
        self._lock = threading.Lock()

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
        gathered = comm.gather(self.events, root=0)
        if comm.Get_rank() != 0:
            return None
        trace = []
        for rank in range(len(gathered)):
            trace.append(
                {"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}}
            )
            trace.append(
                {"name": "process_sort_index", "ph": "M", "pid": rank, "args": {"sort_index": rank}}
            )
        for events in gathered:
            trace.extend(events)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"traceEvents": trace, "displayTimeUnit": "ms"}))
        tmp.replace(self.path)
        return self.path
