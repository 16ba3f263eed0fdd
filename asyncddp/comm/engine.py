"""The communication thread: every op runs here, in program order, with tensor fusion.

Design (and why): each process has ONE background thread that executes queued ops in the order
the program issued them. All ranks issue the same ops in the same order, so collectives and
neighbour exchanges always match, and a ``*_nonblocking`` call only appends to a queue and
returns an ``OpHandle`` (a future) — the op progresses while Python computes, because mpi4py
releases the GIL inside MPI calls. Many handles can be in flight. The thread talks on its own
duplicates of the world/local/cross communicators, so MPI calls made on the main thread (windows,
``is_homogeneous``) can never be matched against ours. This needs ``MPI_THREAD_MULTIPLE``
(mpi4py's default request); when the MPI library grants less, or ``ASYNCDDP_COMM_THREAD=0``, ops
run synchronously on the caller's thread and nonblocking handles come back already completed.
A blocking call made while nothing is queued or running also runs on the caller's thread (same
order, no thread hand-off), and is never fused. Every rank must make the same sequence of calls,
blocking or nonblocking, as with any MPI collective. Every op, of every kind, blocking or not,
enters through ``Engine.call`` and runs through one batch runner, which counts and records it.

Fusion: when the op at the head of the queue is fusable (same kind and arguments, smaller than
half of ``ASYNCDDP_FUSION_THRESHOLD``), the thread counts how many consecutive queued ops could
be packed into one buffer of at most that many bytes, and all ranks agree on the minimum count
with one tiny ``Allreduce(MIN)``. Queue contents differ between ranks with timing, but their
prefix is identical, so the agreed batch is identical everywhere. Counters in ``comm_stats()``
show the effect (fewer MPI messages with fusion on).

Bytes: every place that hands data to MPI counts it (``count_sent``; ``asyncddp.comm.traffic``
says what is measured and what computed), and ``_execute`` files each op's bytes under its kind:
one integer add per MPI call and two per op, nothing on the hot path that could be seen.

Fault tolerance (``ASYNCDDP_FAULT_TOLERANT=1``): an op that meets a dead peer goes, from this
one batch runner, to ``asyncddp.comm.recovery``, which rebuilds the world and this engine's
communicators in place (``rebind``) and returns the ``RankLostError`` to raise. Every op issued
on the old world fails with that same error, the queued ones and those issued until the error
reaches the program (a blocking call raising it or a handle's ``wait``): their plans were made
for the old world, and ranks may issue different numbers of them before noticing.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from asyncddp import exported_by
from asyncddp.comm import context as _context_module
from asyncddp.comm import failure
from asyncddp.comm.context import get_context
from asyncddp.comm.handles import OpHandle
from asyncddp.comm.env import env_flag, env_int
from asyncddp.comm.timeline import Timeline, now_us, timeline_path_from_env
from asyncddp.comm.traffic import WINDOWS
from asyncddp.errors import RankLostError

__all__ = [*exported_by(__name__), "Op", "CommStats", "get_engine", "live_engine", "fusion_threshold",
           "check_world"]

FUSION_ENV = "ASYNCDDP_FUSION_THRESHOLD"
THREAD_ENV = "ASYNCDDP_COMM_THREAD"
DEFAULT_FUSION_THRESHOLD = 8 * 1024 * 1024


def fusion_threshold() -> int:
    """Bytes per fusion buffer from ``ASYNCDDP_FUSION_THRESHOLD`` (default 8 MiB, 0 = off)."""
    return env_int(FUSION_ENV, DEFAULT_FUSION_THRESHOLD,
                   expected="a byte count (a non-negative integer; 0 disables fusion)")


@dataclass(slots=True)
class Op:
    """One queued operation. ``run(engine, batch)`` executes a batch and returns its results."""

    kind: str
    name: str
    run: Callable[["Engine", list["Op"]], list[Any]]
    args: Any
    nbytes: int
    fuse_key: tuple | None = None
    peers: tuple = ()
    handle: OpHandle | None = None


@dataclass(frozen=True)
class CommStats:
    """This rank's communication since ``init()`` or the last ``reset_comm_stats()``.

    ``bytes_sent``: what this rank handed to MPI to send, every op and window op included
    (point-to-point and one-sided bytes measured, MPI collectives' computed as the
    bandwidth-optimal volume: ``asyncddp.comm.traffic``); ``bytes_by_kind``: the same per op kind
    (``allreduce``, ``neighbor_allreduce``, ``win_put``, ...: the payload; the checks every op
    makes first under ``shape_check`` and ``pattern_check``, fusion's under ``fusion_agreement``);
    ``bytes_fetched``: data this rank read from others' windows (``win_get``), sent by them.
    """

    num_ops: int
    num_batches: int
    num_messages: int  # point-to-point sends, one-sided calls and collective calls issued, negotiation included
    threaded: bool
    fusion_threshold: int
    backend: str = "mpi"
    bytes_sent: int = 0
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    bytes_fetched: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Counters:
    """Written only by the thread executing an op, and ops execute one at a time (``_busy``),
    so they need no lock of their own."""

    num_ops: int = 0
    num_batches: int = 0
    num_messages: int = 0
    bytes_sent: int = 0
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    overhead_bytes: int = 0  # the part of bytes_sent filed under a kind of its own (count_overhead)


_STOP = object()


class Engine:
    """Owns the duplicated communicators, the op queue and the thread that drains it."""

    def __init__(self, ctx) -> None:
        from mpi4py import MPI

        self.ctx = ctx
        self.fault_tolerant = failure.enabled()
        self._lost: RankLostError | None = None  # set by a recovery until the program sees it
        self.rebind()
        self.threshold = fusion_threshold()
        from asyncddp.comm.device import chunk_bytes

        # Read once: an exchange decides per op whether a message is one chunk.
        self.chunk = chunk_bytes()
        from asyncddp.comm import nccl

        self.nccl = nccl.maybe_start(self.world, self.local)  # None unless ASYNCDDP_BACKEND=nccl works
        self.counters = _Counters()
        path = timeline_path_from_env()
        self.timeline = Timeline(path, self.rank, self.world.Get_size(), at_exit=True) if path else None
        self.threaded = _threaded()
        self._queue: deque = deque()
        # A plain lock, entered directly: ``with`` on a Condition runs two Python-level calls,
        # and a small blocking op takes this lock twice.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._paused = False  # pause(): queued ops wait for resume() (BlueFog's suspend)
        self._scratch: dict = {}
        self._busy = False  # an op is executing (on the thread, or on a blocking caller's)
        self._thread = None
        if self.threaded:
            self._thread = threading.Thread(target=self._loop, name="asyncddp-comm", daemon=True)
            self._thread.start()
        ctx.finalizers.append(self.close)
        ctx.drains.append(self.drain)

    def rebind(self) -> None:
        """(Re)make this engine's private duplicates of the context's communicators."""
        self.world = self.ctx.comm.Dup()
        self.local = self.ctx.local_comm.Dup()
        self.cross = self.ctx.cross_comm.Dup()
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        self._scratch = {}

    # -- the one way in -----------------------------------------------------------------------
    def call(self, op: Op, blocking: bool) -> Any:
        """Run ``op``: blocking, return its result (or raise its error); else return an
        ``OpHandle`` at once.

        A blocking op is never fused (the program waits for it before issuing the next, so it
        has nothing to fuse with: the same on every rank, hence no negotiation), and when
        nothing is queued or running it runs right here on the caller's thread: the hand-off to
        the communication thread and back costs two thread wake-ups, tens of microseconds (far
        more on an oversubscribed machine), more than a small exchange itself.
        """
        if self._lost is not None:
            return self._stale(op, blocking)
        if blocking:
            op.fuse_key = None
            if self._paused:  # the program waits for this op, so it cannot stay paused
                self.resume()
            with self._lock:
                inline = not (self._queue or self._busy)
                self._busy = self._busy or inline
            if inline:
                try:
                    return self._execute([op])[0]
                except RankLostError as error:
                    self.delivered(error)
                    raise
                finally:
                    with self._lock:
                        self._busy = False
                        if self._queue:  # queued meanwhile by another thread: wake the comm thread
                            self._cond.notify()
        op.handle = OpHandle(op.name, self.resume, self.delivered)
        if self.threaded:
            with self._lock:
                if self._lost is not None:  # a recovery finished meanwhile
                    op.handle.set_error(self._lost)
                else:
                    self._queue.append(op)
                    self._cond.notify()
        else:
            self._complete([op])
        return op.handle.wait() if blocking else op.handle

    def _stale(self, op: Op, blocking: bool):
        """An op issued on the old world after a recovery the program has not seen yet."""
        error = self._lost
        if blocking:
            self.delivered(error)
            raise error
        op.handle = OpHandle(op.name, None, self.delivered)
        op.handle.set_error(error)
        return op.handle

    def delivered(self, error: BaseException) -> None:
        """The program has been handed ``error``: ops it issues from now on use the new world."""
        if error is self._lost:
            self._lost = None

    def _recover(self, error: BaseException) -> RankLostError:
        """The loss ``error`` reported, turned into the error every old-world op fails with."""
        from asyncddp.comm import recovery

        lost = recovery.recover(self, error)
        with self._lock:
            self._lost = lost
            queued = [op for op in self._queue if op is not _STOP]
            stop = len(queued) != len(self._queue)
            self._queue.clear()
            if stop:
                self._queue.append(_STOP)
        for op in queued:
            op.handle.set_error(lost)
        return lost

    def _failed(self, error: BaseException) -> bool:
        if not self.fault_tolerant:
            return False
        return failure.is_failure(error)

    def pause(self) -> None:
        """Queue nonblocking ops without starting them until ``resume()``; a blocking call, or
        a wait on a handle that is not done, resumes first rather than hang."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            with self._lock:
                self._paused = False
                self._cond.notify_all()

    def drain(self) -> None:
        """Return once every op submitted so far has finished (a paused queue is resumed: the
        caller waits for it)."""
        self.resume()
        with self._lock:
            while self._queue or self._busy:
                # A blocking op run on another caller's thread ends without notify_all: poll.
                self._cond.wait(0.05)

    def scratch(self, key, make):
        """A receive buffer reused across ops (only one op executes at a time).

        Fresh multi-megabyte buffers cost a page fault per 4 KiB on first touch, about as much
        as the transfer itself; keeping the last few avoids that. At most 8 are kept.
        """
        buf = self._scratch.pop(key, None)
        if buf is None:
            buf = make()
        self._scratch[key] = buf  # most recently used last
        while len(self._scratch) > 8:
            self._scratch.pop(next(iter(self._scratch)))
        return buf

    def count_sent(self, num_messages: int, nbytes: int) -> None:
        """``num_messages`` MPI calls sending ``nbytes`` from this rank in all (``comm.traffic``)."""
        counters = self.counters
        counters.num_messages += num_messages
        counters.bytes_sent += nbytes

    def count_overhead(self, kind: str, num_messages: int, nbytes: int) -> None:
        """``count_sent`` for a check or agreement an op makes besides moving its payload: filed
        under ``kind`` instead of the op's kind."""
        counters = self.counters
        counters.num_messages += num_messages
        counters.bytes_sent += nbytes
        counters.overhead_bytes += nbytes
        counters.bytes_by_kind[kind] = counters.bytes_by_kind.get(kind, 0) + nbytes

    # -- the thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue or self._busy or self._paused:
                    self._cond.wait()
                head = self._queue[0]
                if head is _STOP:
                    self._queue.popleft()
                    return
                available = self._fusable_prefix(head)
                self._busy = True
            try:
                try:
                    count = self._agree(head, available)
                except BaseException as error:
                    if not self._failed(error):
                        raise
                    self._recover(error)  # fails the whole queue, head included
                    continue
                with self._lock:
                    batch = [self._queue.popleft() for _ in range(count)]
                self._complete(batch)
            finally:
                with self._lock:
                    self._busy = False
                    self._cond.notify_all()

    def _fusable_prefix(self, head: Op) -> int:
        if head.fuse_key is None or self.threshold <= 0 or 2 * head.nbytes > self.threshold:
            return 1
        count, total = 0, 0
        for op in self._queue:
            if op is _STOP or op.fuse_key != head.fuse_key or total + op.nbytes > self.threshold:
                break
            count += 1
            total += op.nbytes
        return count

    def _agree(self, head: Op, available: int) -> int:
        # Whether to negotiate depends only on whether the head op is fusable at all and on the
        # threshold, the same on every rank, so either all ranks take part in this Allreduce or
        # none does. Not on the head's size: a rank passing a tensor of another size would skip
        # the negotiation and garble it (the size mismatch itself is each op's check to report).
        if head.fuse_key is None or self.threshold <= 0:
            return 1
        import numpy as np
        from mpi4py import MPI

        from asyncddp.comm.traffic import allreduce_bytes

        buf = np.array([available], dtype=np.int64)
        self.world.Allreduce(MPI.IN_PLACE, buf, op=MPI.MIN)
        self.count_overhead("fusion_agreement", 1, allreduce_bytes(buf.nbytes, self.size))
        return max(1, int(buf[0]))

    def _execute(self, batch: list[Op]) -> list:
        """The one batch runner: run ``batch``, count it, record it on the timeline; raises."""
        start = now_us() if self.timeline is not None else 0.0
        counters = self.counters
        sent_before = counters.bytes_sent - counters.overhead_bytes
        try:
            results = batch[0].run(self, batch)
        except BaseException as error:
            if self._failed(error):
                raise self._recover(error) from None
            raise
        finally:
            counters.num_ops += len(batch)
            counters.num_batches += 1
            sent = counters.bytes_sent - counters.overhead_bytes - sent_before
            if sent:
                kind = batch[0].kind
                counters.bytes_by_kind[kind] = counters.bytes_by_kind.get(kind, 0) + sent
        if self.timeline is not None:
            end = now_us()
            for op in batch:
                self.timeline.record(op.name, op.kind, start, end, op.nbytes, op.peers)
        return results

    def _complete(self, batch: list[Op]) -> None:
        """``_execute`` for queued ops: results and errors go to their handles."""
        try:
            results = self._execute(batch)
        except BaseException as error:  # handed to whoever synchronizes; never kills the thread
            for op in batch:
                op.handle.set_error(error)
            return
        for op, result in zip(batch, results):
            op.handle.set_result(result)

    # -- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        global _engine
        if self._thread is not None:
            with self._lock:
                self._paused = False  # shutdown runs what was queued while paused, then stops
                self._queue.append(_STOP)
                self._cond.notify()
            self._thread.join()
        if self.nccl is not None:
            self.nccl.close()
        if self.timeline is not None:
            self.timeline.write_merged(self.world)
        for comm in (self.world, self.local, self.cross):
            comm.Free()
        if _engine is self:
            _engine = None


_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The engine of the live context, created (collectively) by the first op after init()."""
    global _engine
    ctx = get_context()
    with _engine_lock:
        if _engine is None or _engine.ctx is not ctx:
            _engine = Engine(ctx)
        return _engine


def live_engine() -> Engine:
    """``get_engine()`` without the lock when the engine of the live context already exists."""
    engine = _engine
    if engine is not None and engine.ctx is _context_module._context:
        return engine
    return get_engine()


def _threaded() -> bool:
    """Whether ops run on a communication thread: MPI gives every thread access and the user allows it."""
    from mpi4py import MPI

    return MPI.Query_thread() == MPI.THREAD_MULTIPLE and env_flag(THREAD_ENV, True)


def _started() -> Engine | None:
    """The live context's engine if an op has made it, without making it (that is collective)."""
    ctx = get_context()
    engine = _engine
    return engine if engine is not None and engine.ctx is ctx else None


def _totals(engine: Engine | None) -> tuple[int, int, int, int, dict[str, int], int]:
    """(ops, batches, messages, bytes sent, bytes per kind, bytes fetched): the engine's counters
    (zero before it starts) and every window's, as counted now."""
    c = engine.counters if engine is not None else _Counters()
    win_messages, win_sent, win_fetched, win_kinds = WINDOWS.snapshot()
    by_kind = dict(c.bytes_by_kind)  # a copy first: the comm thread may add a kind meanwhile
    for kind, nbytes in win_kinds.items():
        by_kind[kind] = by_kind.get(kind, 0) + nbytes
    return c.num_ops, c.num_batches, c.num_messages + win_messages, c.bytes_sent + win_sent, by_kind, win_fetched


# (owner, totals) of the last reset_comm_stats(): the owner is the engine, or its context when no
# op had started it; counts of any other owner (an earlier init()) are not a baseline.
_baseline: list = [None, None]


def comm_stats() -> CommStats:
    """This rank's communication counters: ops, fused batches, MPI messages, bytes sent (in all
    and per op kind) and bytes fetched from windows, since ``init()`` or ``reset_comm_stats()``.
    This rank's alone: before the first op it reads zeros rather than start the engine (collective)."""
    engine = _started()
    ops, batches, messages, sent, by_kind, fetched = _totals(engine)
    owner, base = _baseline
    if owner is not (engine or get_context()):
        base = None
    if base is not None:
        ops, batches, messages, sent = ops - base[0], batches - base[1], messages - base[2], sent - base[3]
        by_kind = {kind: n - base[4].get(kind, 0) for kind, n in by_kind.items() if n != base[4].get(kind, 0)}
        fetched -= base[5]
    if engine is None:  # what the first op will start: the backend asked for (it may fall back to mpi)
        from asyncddp.comm.nccl import requested_backend

        threaded, threshold, backend = _threaded(), fusion_threshold(), requested_backend()
    else:
        threaded, threshold = engine.threaded, engine.threshold
        backend = "nccl" if engine.nccl is not None else "mpi"
    return CommStats(ops, batches, messages, threaded, threshold, backend, sent, by_kind, fetched)


def reset_comm_stats() -> None:
    """Start ``comm_stats()`` counting from zero (ops still running count from here on too)."""
    engine = _started()
    _baseline[:] = [engine or get_context(), _totals(engine)]


def _run_check(engine, batch) -> list:
    from mpi4py import MPI

    world = engine.world
    # A probe makes MPI progress, which is when news of a failure is taken in; a wildcard
    # probe also fails outright once a failure is known.
    world.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
    if world.Is_revoked() or world.Get_failed().Get_size() > 0:
        raise failure.PeerFailure("a rank of the world is known to have failed", ())
    return [None]


def check_world() -> None:
    """Raise ``RankLostError`` (after recovering) when this rank knows of a dead rank or a
    survivor has started recovering; otherwise return at once, without communicating.

    For code that communicates only one-sidedly (windows), where nothing else would notice:
    a put into a dead rank's shared memory does not fail. Runs as an engine op, so it never
    overlaps the communication thread. Does nothing unless the job is fault tolerant.
    """
    if not failure.enabled():
        return
    live_engine().call(Op("check_world", "check_world", _run_check, None, 0), True)
