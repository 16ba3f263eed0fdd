"""Ring allreduce of a large host buffer across machines, on point-to-point messages.

MPI's own ``Allreduce`` is the right call on one machine and for small buffers. Across machines
over TCP, Open MPI picks a pairwise algorithm for large buffers (recursive halving and doubling)
whose every step is an exchange in both directions between two ranks; on a TCP connection each
side's rendezvous answer then queues behind the other side's bulk data (see
``asyncddp.comm.p2p``), and the steps run at about half the link's rate: 9 MB over four emulated
nodes on 1 Gbit/s links took 185-220 ms, where a ring, sending one way per connection, took
124 ms (gloo's ring, which torch DDP uses on CPU, 112 ms; the bytes alone 109 ms).

``ring_allreduce_`` reduces in ``n - 1`` steps (each rank sends one 1/n chunk to its right
neighbour and adds the chunk from its left one into its own) and gathers in ``n - 1`` more
(each fully reduced chunk travels once round the ring), so every rank sends 2(n−1)/n of the
buffer, the least any allreduce can. Every chunk is reduced in one order on one rank and then
copied to the others, so every rank ends with the same bits. Each step posts its send before
its receive (``p2p``'s rule for large messages).
"""

from __future__ import annotations

import numpy as np

from asyncddp.comm.p2p import wait_all
from asyncddp.errors import CommError

__all__ = ["MIN_CHUNK_BYTES", "use_ring", "ring_allreduce_"]

# Below this many bytes per rank a step is latency, not bandwidth, and MPI's algorithms (fewer
# steps than the ring's 2(n-1)) are faster.
MIN_CHUNK_BYTES = 256 * 1024

_NUMPY_OPS = {"sum": np.add, "min": np.minimum, "max": np.maximum, "prod": np.multiply}
_TAG = 0  # messages of one ring step are matched by source and posting order (MPI never reorders them)


def use_ring(nbytes: int, comm_size: int, spans_machines: bool) -> bool:
    """True when ``ring_allreduce_`` should replace MPI's ``Allreduce``: a communicator across
    machines and at least ``MIN_CHUNK_BYTES`` per rank. The same on every rank of the
    communicator (its arguments are), so all ranks take the same path."""
    return spans_machines and comm_size > 1 and nbytes >= comm_size * MIN_CHUNK_BYTES


def ring_allreduce_(engine, comm, array: np.ndarray, op: str) -> None:
    """Reduce the flat ``array`` in place over ``comm`` with ``op`` (sum, min, max or prod)."""
    n, me = comm.Get_size(), comm.Get_rank()
    reduce = _NUMPY_OPS[op]
    bounds = [array.size * k // n for k in range(n + 1)]
    right, left = (me + 1) % n, (me - 1) % n
    widest = max(bounds[k + 1] - bounds[k] for k in range(n))
    incoming = engine.scratch(("ring", widest, array.dtype.str), lambda: np.empty(widest, array.dtype))

    def chunk(index: int) -> np.ndarray:
        return array[bounds[index]:bounds[index + 1]]

    for step in range(n - 1):  # reduce-scatter: afterwards chunk (me + 1) % n is complete here
        out, into = chunk((me - step) % n), chunk((me - step - 1) % n)
        got = incoming[:into.size]
        _step(comm, [comm.Isend(out, right, _TAG), comm.Irecv(got, left, _TAG)])
        reduce(into, got, out=into)
    for step in range(n - 1):  # allgather: pass each complete chunk on round the ring
        out, into = chunk((me - step + 1) % n), chunk((me - step) % n)
        _step(comm, [comm.Isend(out, right, _TAG), comm.Irecv(into, left, _TAG)])
    engine.count_messages(2 * (n - 1))


def _step(comm, requests: list) -> None:
    statuses = wait_all(requests)
    if statuses.failure is not None:
        raise CommError(f"allreduce: a ring step failed between ranks ({statuses.failure})")
