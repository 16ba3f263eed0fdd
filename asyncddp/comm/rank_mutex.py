"""A distributed mutex per rank, for the one-sided windows of ``asyncddp.comm.windows``.

Each window owns a tiny second MPI window holding one int64 lock word per rank. Rank ``t``'s
mutex guards ``t``'s neighbour buffers: writers take it around a put/accumulate into ``t`` and
``t`` takes its own around a ``win_update``, so a read never sees half of an accumulate. It is
a spin lock on ``MPI_Compare_and_swap`` under a shared passive-target epoch, with exponential
backoff (capped at 1 ms) so a waiting rank does not flood the target. We do not use
``MPI_Win_lock(EXCLUSIVE)`` as the mutex because an exclusive epoch cannot stay open while the
holder issues its own RMA operations to the same target through another epoch.

Mutexes are taken in ascending rank order (deadlock freedom) and are re-entrant inside one
process, so ``with win_mutex(name): win_accumulate(..., require_mutex=True)`` cannot
self-deadlock.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from asyncddp.comm.traffic import WINDOWS

__all__ = ["RankMutexes"]

_FREE = 0
_MAX_BACKOFF_S = 1e-3


class RankMutexes:
    """One lock word per rank of ``comm`` (collective to create and free)."""

    def __init__(self, comm) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self._win = MPI.Win.Allocate(8, 8, comm=comm)
        self._rank = comm.Get_rank()
        self._win.Lock(self._rank, MPI.LOCK_EXCLUSIVE)
        np.frombuffer(self._win.tomemory(), dtype=np.int64)[0] = _FREE
        self._win.Unlock(self._rank)
        self._held: dict[int, int] = {}  # rank -> re-entrancy depth in this process
        self._thread_lock = threading.Lock()  # one RMA epoch per target at a time in-process
        self._owner_tag = self._rank + 1  # the value a held lock word carries (never _FREE)

    def _try(self, target: int) -> bool:
        MPI = self._mpi
        origin = np.array([self._owner_tag], dtype=np.int64)
        compare = np.array([_FREE], dtype=np.int64)
        result = np.zeros(1, dtype=np.int64)
        with self._thread_lock:
            self._win.Lock(target, MPI.LOCK_SHARED)
            self._win.Compare_and_swap(
                [origin, MPI.INT64_T], [compare, MPI.INT64_T], [result, MPI.INT64_T], target, 0
            )
            self._win.Unlock(target)
        self._count(target, origin.nbytes + compare.nbytes)
        return int(result[0]) == _FREE

    def _release(self, target: int) -> None:
        MPI = self._mpi
        origin = np.array([_FREE], dtype=np.int64)
        result = np.zeros(1, dtype=np.int64)
        with self._thread_lock:
            self._win.Lock(target, MPI.LOCK_SHARED)
            self._win.Fetch_and_op(
                [origin, MPI.INT64_T], [result, MPI.INT64_T], target, 0, MPI.REPLACE
            )
            self._win.Unlock(target)
        self._count(target, origin.nbytes)

    def _count(self, target: int, nbytes: int) -> None:
        if target != self._rank:  # an atomic on this rank's own lock word leaves nothing on the wire
            WINDOWS.sent("win_mutex", 1, nbytes)

    def acquire(self, ranks) -> None:
        for target in sorted(set(ranks)):
            depth = self._held.get(target, 0)
            if depth == 0:
                backoff = 1e-6
                while not self._try(target):
                    time.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
            self._held[target] = depth + 1

    def release(self, ranks) -> None:
        for target in sorted(set(ranks), reverse=True):
            depth = self._held.get(target, 0)
            if depth <= 1:
                self._held.pop(target, None)
                if depth == 1:
                    self._release(target)
            else:
                self._held[target] = depth - 1

    def free(self) -> None:
        self._win.Free()
