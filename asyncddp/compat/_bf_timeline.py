"""BlueFog's timeline: ``BLUEFOG_TIMELINE=PREFIX`` at ``bf.init()`` makes each rank write its own
``PREFIX{rank}.json`` while it runs. Re-exported by ``asyncddp.compat.bluefog``.

The file is BlueFog's layout of a Chrome trace (chrome://tracing, https://ui.perfetto.dev): a
JSON array of begin/end (``"B"``/``"E"``) events, one row ("pid") per tensor or window name,
threads numbered 1, 2, ... in the order they first record something, timestamps in microseconds
since the file was opened. Each event is flushed as it is recorded, so the file can be read
during the run (the array is closed when the job shuts down). What is recorded:

* ``ENQUEUE_<OP>`` on the calling thread, over the call of each collective, neighbour and window
  function (for a nonblocking one, the call that queues the op);
* ``MPI_<KIND>`` on the thread that ran the communication (asyncddp's communication or window
  thread, or the caller's when it ran inline), over the op's execution: ``MPI_NEIGHBOR_ALLREDUCE``,
  ``MPI_ALLREDUCE``, ``MPI_WIN_PUT``, ``MPI_WIN_ACCUMULATE``, ... (the names BlueFog's
  documentation and tests use; BlueFog 0.3's own writer labels these ``PROC_*``);
* the activities a program opens and closes itself (``timeline_start_activity``).

``asyncddp run --timeline PATH`` (asyncddp's own merged trace) works independently of this file,
and both may be on at once.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading

from asyncddp.comm import windows as _win
from asyncddp.comm.timeline import now_us

__all__ = ["timeline_start_activity", "timeline_end_activity"]

TIMELINE_ENV = "BLUEFOG_TIMELINE"


class TimelineFile:
    """One rank's BlueFog timeline file: rows and thread numbers are assigned on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "w")  # noqa: SIM115  (open for the life of the job)
        self._file.write("[")
        self._file.flush()
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self._threads: dict[int, int] = {}
        self._start = now_us()
        self._count = 0

    def _write(self, event: dict) -> None:  # with _lock held
        self._file.write(("\n" if self._count == 0 else ",\n") + json.dumps(event))
        self._count += 1

    def event(self, row: str, phase: str, activity: str | None, ts_us: float, thread: int) -> None:
        """Write one ``B`` (begin ``activity``) or ``E`` (end) event on ``row``."""
        with self._lock:
            if self._file.closed:
                return
            tid = self._threads.setdefault(thread, len(self._threads) + 1)
            pid = self._rows.get(row)
            if pid is None:
                pid = self._rows[row] = len(self._rows) + 1
                self._write({"name": "process_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": row}})
                self._write({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": tid,
                             "args": {"sort_index": pid}})  # fmt: skip
            event = {"ph": phase, "ts": round(ts_us - self._start), "pid": pid, "tid": tid}
            if activity is not None:
                event["name"] = activity
            self._write(event)
            self._file.flush()

    def span(self, row: str, activity: str, start_us: float, end_us: float, thread: int) -> None:
        self.event(row, "B", activity, start_us, thread)
        self.event(row, "E", None, end_us, thread)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write("\n]\n")
                self._file.close()


class _EngineRecorder:
    """Takes the place of the communication engine's ``timeline``: every op the engine records
    becomes an ``MPI_<KIND>`` span in the BlueFog file, and still reaches asyncddp's own
    timeline (``inner``) when that is on too."""

    def __init__(self, file: TimelineFile, inner) -> None:
        self.file, self.inner = file, inner

    def record(self, name, kind, start_us, end_us, nbytes, peers=()) -> None:
        self.file.span(name, f"MPI_{kind.upper()}", start_us, end_us, threading.get_ident())
        if self.inner is not None:
            self.inner.record(name, kind, start_us, end_us, nbytes, peers)

    @property
    def events(self) -> list[dict]:
        return self.inner.events if self.inner is not None else []

    def write_merged(self, comm):
        """Called by the engine when it closes (collective): the job is ending."""
        _stop(self.file)
        return self.inner.write_merged(comm) if self.inner is not None else None


_state: dict = {"file": None}


def _window_op(kind: str, name: str, start_us: float, end_us: float) -> None:
    file = _state["file"]
    if file is not None:
        file.span(name, f"MPI_{kind.upper()}", start_us, end_us, threading.get_ident())


def _stop(file: TimelineFile) -> None:
    file.close()
    _win.remove_op_observer(_window_op)
    if _state["file"] is file:
        _state["file"] = None


def attach(engine) -> None:
    """At ``bf.init()``: open ``BLUEFOG_TIMELINE{rank}.json`` when the variable is set (BlueFog
    reads it there), and route the engine's and the windows' op records into it."""
    file = _state["file"]
    if file is None:
        prefix = os.environ.get(TIMELINE_ENV)
        if not prefix:
            return
        file = _state["file"] = TimelineFile(f"{prefix}{engine.rank}.json")
        _win.add_op_observer(_window_op)
    if not isinstance(engine.timeline, _EngineRecorder):
        engine.timeline = _EngineRecorder(file, engine.timeline)


def _asyncddp_timeline():
    """asyncddp's own recorder (``asyncddp run --timeline``), or None."""
    from asyncddp.comm.context import get_context
    from asyncddp.comm.engine import get_engine

    get_context()
    timeline = get_engine().timeline
    return timeline.inner if isinstance(timeline, _EngineRecorder) else timeline


def enqueue_activity(activity: str, default_row: str | None = None):
    """Decorate a BlueFog op: with the timeline on, its call is an ``activity`` span on the row
    of its ``name`` argument (``default_row`` when that is None: the engine's name for it)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            file = _state["file"]
            if file is None:
                return fn(*args, **kwargs)
            arguments = signature.bind(*args, **kwargs).arguments
            row = arguments.get("name") or default_row
            thread, start = threading.get_ident(), now_us()
            try:
                return fn(*args, **kwargs)
            finally:
                file.span(str(row), activity, start, now_us(), thread)

        return wrapper

    return decorate


# --- the program's own activities ----------------------------------------------------------------

_open: dict[tuple[str, int], tuple[str, float]] = {}
_open_lock = threading.Lock()


def timeline_start_activity(tensor_name: str, activity_name: str) -> bool:
    """Open activity ``activity_name`` on row ``tensor_name`` for this thread; False when no
    timeline is on (``BLUEFOG_TIMELINE`` at init, or ``asyncddp run --timeline``) or this thread
    has one open on that row already."""
    file, inner = _state["file"], _asyncddp_timeline()
    if file is None and inner is None:
        return False
    key = (tensor_name, threading.get_ident())
    start = now_us()
    with _open_lock:
        if key in _open:
            return False
        _open[key] = (activity_name, start)
    if file is not None:
        file.event(tensor_name, "B", activity_name, start, key[1])
    return True


def timeline_end_activity(tensor_name: str) -> bool:
    """Close the activity this thread has open on ``tensor_name``; False when none is."""
    inner = _asyncddp_timeline()
    key = (tensor_name, threading.get_ident())
    with _open_lock:
        started = _open.pop(key, None)
    if started is None:
        return False
    activity, start = started
    end = now_us()
    file = _state["file"]
    if file is not None:
        file.event(tensor_name, "E", None, end, key[1])
    if inner is not None:
        inner.record(tensor_name, activity, start, end, 0)
    return True

