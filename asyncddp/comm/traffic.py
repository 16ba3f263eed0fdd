"""What each rank puts on the wire: the byte counts behind ``comm_stats()``.

Bytes are counted where they are handed to MPI, the lowest layer this package sees: every
point-to-point send (``p2p``, ``ring``: the message's own bytes, measured), every one-sided put or
accumulate (its data, plus the 8-byte associated-p and put counter it writes) and every atomic on
another rank's window mutex (``win_mutex``), and every call of
an MPI collective. What an MPI collective puts on the wire depends on the algorithm the MPI
library picks inside the call, which no caller can see, so its bytes are *computed*: the volume
per rank of the bandwidth-optimal algorithm, the least any algorithm moves (the functions below;
a ring ``Allreduce`` sends exactly that, and ``asyncddp.comm.ring`` runs one across machines).
``win_get`` data is sent by the rank read from, without it taking part; the reader counts it as
``bytes_fetched``, not as bytes it sent.

``Tally`` is the counter of one-sided traffic: window ops run on their own thread and on the
caller's, so it takes a lock; the communication thread's counters live on its engine and need
none (one op executes at a time).
"""

from __future__ import annotations

import threading

__all__ = ["allreduce_bytes", "reduce_scatter_bytes", "allgather_bytes", "broadcast_bytes", "Tally", "WINDOWS"]


def allreduce_bytes(nbytes: int, num_ranks: int) -> int:
    """Bytes one rank sends in an allreduce of ``nbytes``: 2(n-1)/n of it (reduce-scatter, then all-gather)."""
    return 2 * (num_ranks - 1) * nbytes // num_ranks


def reduce_scatter_bytes(nbytes: int, num_ranks: int) -> int:
    """Bytes one rank sends in a reduce-scatter of ``nbytes`` in all: (n-1)/n of it."""
    return (num_ranks - 1) * nbytes // num_ranks


def allgather_bytes(own_nbytes: int, num_ranks: int) -> int:
    """Bytes one rank sends in an all-gather where it contributes ``own_nbytes``: its block, to
    each of the n-1 others (passed on round a ring, or sent directly)."""
    return (num_ranks - 1) * own_nbytes


def broadcast_bytes(nbytes: int, num_ranks: int) -> int:
    """Bytes per rank of a broadcast of ``nbytes``: the n-1 copies the others must receive,
    shared over the n ranks (a tree or scatter-allgather divides the sending among them)."""
    return (num_ranks - 1) * nbytes // num_ranks


class Tally:
    """Messages and bytes counted by whichever thread moves them (one-sided ops)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.num_messages = 0
        self.bytes_sent = 0
        self.bytes_fetched = 0
        self.bytes_by_kind: dict[str, int] = {}

    def sent(self, kind: str, num_messages: int, nbytes: int) -> None:
        with self._lock:
            self.num_messages += num_messages
            self.bytes_sent += nbytes
            self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + nbytes

    def fetched(self, num_messages: int, nbytes: int) -> None:
        with self._lock:
            self.num_messages += num_messages
            self.bytes_fetched += nbytes

    def reset(self) -> None:
        with self._lock:
            self.num_messages = self.bytes_sent = self.bytes_fetched = 0
            self.bytes_by_kind = {}

    def snapshot(self) -> tuple[int, int, int, dict[str, int]]:
        with self._lock:
            return self.num_messages, self.bytes_sent, self.bytes_fetched, dict(self.bytes_by_kind)


WINDOWS = Tally()  # every window of this process; reset by init() with the engine's counters
