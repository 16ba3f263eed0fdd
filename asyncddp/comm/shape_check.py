"""Every rank agrees that all ranks passed the same shapes, dtype and arguments before data moves.

A collective whose ranks pass tensors of different shapes hands MPI buffers of different sizes:
some ranks then fail with a raw ``MPI_ERR_TRUNCATE``, others return a wrong result or wait
forever, and equal sizes with different shapes go through unnoticed. So before the data round,
each op reduces one pair ``(h, -h)`` of 64-bit hashes of what this rank passed with
``Allreduce(MIN)``: the minimum of ``h`` and the maximum (``-min(-h)``) are equal exactly when
every rank's hash is the same. That is one 16-byte collective, the same on every rank, so all
ranks learn the outcome together and stay in step. Only on a mismatch (all ranks take that branch
together) are the readable descriptions gathered, and every rank raises the same ``CommError``.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from asyncddp.comm.traffic import allgather_bytes, allreduce_bytes
from asyncddp.errors import CommError

__all__ = ["agree", "describe", "mismatch_error"]

_MASK = (1 << 62) - 1  # keeps -h representable in int64


@functools.lru_cache(maxsize=1024)
def _hash(spec: tuple) -> int:
    return int.from_bytes(hashlib.blake2b(repr(spec).encode(), digest_size=8).digest(), "little") & _MASK


def describe(tensor) -> str:
    """``float32 [3, 4]``: how a tensor is named in mismatch errors."""
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def agree(engine, comm, what: str, spec: tuple, text) -> None:
    """Raise ``CommError`` on every rank of ``comm`` unless every rank passed an equal ``spec``.

    ``spec``: a hashable tuple of what must match (shapes, dtype, op arguments); ``text``: a
    function returning the same in words (called only on a mismatch), quoted per rank.
    """
    from mpi4py import MPI

    h = _hash(spec)
    pair = np.array([h, -h], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, pair, op=MPI.MIN)
    engine.count_overhead("shape_check", 1, allreduce_bytes(pair.nbytes, comm.Get_size()))
    if int(pair[0]) == h and int(pair[1]) == -h:
        return
    mine = text()
    texts = comm.allgather(mine)
    engine.count_overhead("shape_check", 1, allgather_bytes(len(mine), comm.Get_size()))
    raise mismatch_error(what, texts, comm.Get_rank(), "the same shape, dtype and arguments")


def mismatch_error(what: str, texts: list[str], me: int, rule: str) -> CommError:
    """The one wording of a mismatch: every rank's ``texts`` entry (ranks that agree grouped),
    which rank this is, and what every rank must pass (``rule``)."""
    groups: dict[str, list[int]] = {}
    for rank, other in enumerate(texts):
        groups.setdefault(other, []).append(rank)
    parts = [f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {other}"
             for other, ranks in groups.items()]
    return CommError(
        f"{what}: ranks passed different tensors or arguments ({'; '.join(parts)}); this is rank "
        f"{me}; every rank must pass {rule} to {what}"
    )
