"""One window: its memory layout, its locks, and the operations on it (put, accumulate, get, update).

``Window`` owns everything about one named window, the way mpi4py's ``util.sync`` objects own
theirs: the public ``win_*`` functions of ``asyncddp.comm.windows`` only look the window up by
name and call a method, so the block layout and the lock discipline below are known here alone.

``win_create(x, name)`` (collective) allocates, on every rank, one MPI window laid out as blocks:
block 0 is this rank's *published* value (what out-neighbours pull with ``win_get``), block
``k + 1`` is the buffer of the k-th in-neighbour (ascending rank order). Each block is a 16-byte
header, an int64 version and a float64 push-sum weight ``p``, followed by the data. Writers
learn their slot on each target from an allgather of everyone's in-neighbour list at creation.

All remote access is passive-target (``MPI_Win_lock(SHARED)`` ... ``Unlock``): a neighbour
deposits data while the owner computes, without the owner calling MPI. On one node Open MPI
selects ``osc/sm`` (plain shared memory), where a put into a rank sleeping in Python completes
in ~0.1 ms; ``asyncddp.comm.mpi_env`` keeps Open MPI off the UCX component that fails noisily
without UCX hardware. The owner reads and writes its own blocks under an exclusive lock on
itself, which excludes concurrent remote epochs, so a single put is never seen half-written.
Across machines Open MPI uses ``osc/rdma``; over TCP (no RDMA hardware) it emulates RMA with
messages, so a put may then wait until the target next enters MPI (untested here: one box).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from asyncddp.comm.averaging import combine, scaled
from asyncddp.comm.buffers import reduction_dtype
from asyncddp.comm.neighbor_plan import as_rank
from asyncddp.comm.rank_mutex import RankMutexes
from asyncddp.comm.traffic import WINDOWS
from asyncddp.errors import CommError
from asyncddp.topology.analysis import in_neighbors, out_neighbors, recv_weights

__all__ = ["Window", "MPI_TYPES", "to_store", "shares_memory"]

_HEADER = 16  # int64 version + float64 associated p
MPI_TYPES = {
    torch.float32: "FLOAT", torch.float64: "DOUBLE", torch.int64: "INT64_T",
    torch.int32: "INT32_T", torch.int16: "INT16_T", torch.int8: "INT8_T", torch.uint8: "UINT8_T",
}  # the dtypes a window stores as is (half precision is stored as float32)


def to_store(tensor: torch.Tensor, store_dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` flat on the host in the window's storage dtype (stages CUDA through host); no
    copy when it already is (check ``shares_memory`` before changing either)."""
    return tensor.detach().to(device="cpu", dtype=store_dtype).contiguous().reshape(-1)


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _weights(weights, allowed: list[int], what: str, op: str, size: int) -> dict[int, float]:
    if weights is None:
        return {r: 1.0 for r in allowed}
    if not isinstance(weights, dict):
        weights = {r: 1.0 for r in weights}
    ranks = [as_rank(r, size, f"{op}: weights key") for r in weights]
    extra = sorted(set(ranks) - set(allowed))
    if extra:
        raise CommError(f"{op}: ranks {extra} are not {what} of this rank (those are {allowed}); "
                        "pass weights only for them")
    return {r: float(w) for r, w in zip(ranks, weights.values())}


class Window:
    """The per-name state: MPI windows, slot maps and the registered tensor."""

    def __init__(self, tensor, name, zero_init, ctx) -> None:
        from mpi4py import MPI

        self.MPI, self.name, self.tensor = MPI, name, tensor
        self.comm = ctx.comm.Dup()  # private: never matched against the engine's collectives
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        topo = ctx.topology
        self.in_ranks = in_neighbors(topo, self.rank)
        self.out_ranks = out_neighbors(topo, self.rank)
        # win_update's default weights; set_topology refuses while a window exists, so they hold.
        if ctx.is_weighted:
            self.default_weights = recv_weights(topo, self.rank)
        else:
            uniform = 1.0 / (len(self.in_ranks) + 1)
            self.default_weights = (uniform, {j: uniform for j in self.in_ranks})
        self.store_dtype = reduction_dtype(tensor.dtype)
        self.numel = tensor.numel()
        self.data_bytes = self.numel * self.store_dtype.itemsize
        self.block = _HEADER + (self.data_bytes + 7) // 8 * 8
        self.mpi_type = getattr(MPI, MPI_TYPES[self.store_dtype])
        shape_key = (name, tuple(tensor.shape), str(tensor.dtype))
        gathered = self.comm.allgather((shape_key, self.in_ranks))
        bad = [r for r, (key, _) in enumerate(gathered) if key != shape_key]
        if bad:
            self.comm.Free()
            raise CommError(
                f"win_create({name!r}): ranks disagree on name/shape/dtype: rank {self.rank} has "
                f"{shape_key}, rank {bad[0]} has {gathered[bad[0]][0]}; create the same window "
                "with the same tensor shape and dtype on every rank"
            )
        self.slot_of = {j: k for k, j in enumerate(self.in_ranks)}  # my in-neighbour -> my slot
        self.remote_slot = {t: gathered[t][1].index(self.rank) for t in self.out_ranks}
        self.win = MPI.Win.Allocate(self.block * (len(self.in_ranks) + 1), 1, comm=self.comm)
        self.mutexes = RankMutexes(self.comm)
        self.thread_lock = threading.RLock()  # one RMA epoch per target at a time in-process
        self.memory = np.frombuffer(self.win.tomemory(), dtype=np.uint8)
        self.p = 1.0
        self.adopted = False  # win_memory: the registered tensor is block 0 itself
        self.published_p = None  # block 0's p as last written (set by _write)
        host = to_store(tensor, self.store_dtype)
        with self.local():
            self._write(0, host, 1.0)
            self._header(0)[0] = 0  # puts completed
            # A buffer's associated p starts at 0 even when its data starts as a copy of the
            # tensor: p counts only what neighbours sent (BlueFog's rule), so a rank nobody
            # sent to keeps p = 1 through win_update_then_collect.
            for k in range(len(self.in_ranks)):
                self._write(k + 1, torch.zeros_like(host) if zero_init else host, 0.0)
                self._header(k + 1)[0] = 0
        self.comm.Barrier()  # nobody writes into a window before its owner initialised it

    # -- local memory access (call inside ``local()``) --
    def _header(self, block: int) -> np.ndarray:
        start = block * self.block
        return self.memory[start:start + 8].view(np.int64)

    def _p(self, block: int) -> np.ndarray:
        start = block * self.block + 8
        return self.memory[start:start + 8].view(np.float64)

    def _data(self, block: int) -> torch.Tensor:
        start = block * self.block + _HEADER
        raw = torch.from_numpy(self.memory[start:start + self.data_bytes])
        return raw.view(self.store_dtype)

    def _write(self, block: int, host: torch.Tensor, p: float) -> None:
        self._data(block).copy_(host)
        self._p(block)[0] = p
        if block == 0:
            self.published_p = p

    @contextmanager
    def local(self):
        with self.thread_lock:
            self.win.Lock(self.rank, self.MPI.LOCK_EXCLUSIVE)
            try:
                self.win.Sync()
                yield
                self.win.Sync()
            finally:
                self.win.Unlock(self.rank)

    # -- remote access --
    def deposit(self, target: int, payload: torch.Tensor, p: float, accumulate: bool, with_p: bool) -> None:
        MPI = self.MPI
        start = (self.remote_slot[target] + 1) * self.block
        one = np.ones(1, dtype=np.int64)
        with self.thread_lock:
            self.win.Lock(target, MPI.LOCK_SHARED)
            if accumulate:
                data = [payload.numpy(), self.mpi_type]
                self.win.Accumulate(data, target, (start + _HEADER, self.numel, self.mpi_type),
                                    MPI.SUM)
            else:
                data = [payload.view(torch.uint8).numpy(), MPI.BYTE]
                self.win.Put(data, target, (start + _HEADER, self.data_bytes, MPI.BYTE))
            if with_p:
                pbuf = [np.array([p], dtype=np.float64), MPI.DOUBLE]
                op = MPI.SUM if accumulate else MPI.REPLACE
                self.win.Accumulate(pbuf, target, (start + 8, 1, MPI.DOUBLE), op)
            self.win.Accumulate([one, MPI.INT64_T], target, (start, 1, MPI.INT64_T), MPI.SUM)
            self.win.Unlock(target)
        # The data, then the 8-byte p (when carried) and put counter, each one RMA call.
        WINDOWS.sent("win_accumulate" if accumulate else "win_put", 2 + with_p,
                      payload.nbytes + 8 * (1 + with_p))

    def _fetch_and_op(self, target: int, value: int, op) -> int:
        """One atomic op on ``target``'s put count (block 0's header); returns the old value."""
        MPI = self.MPI
        origin, result = np.array([value], dtype=np.int64), np.zeros(1, dtype=np.int64)
        with self.thread_lock:
            self.win.Lock(target, MPI.LOCK_SHARED)
            self.win.Fetch_and_op([origin, MPI.INT64_T], [result, MPI.INT64_T], target, 0, op)
            self.win.Unlock(target)
        if target != self.rank:  # an atomic on this rank's own window leaves nothing on the wire
            WINDOWS.sent("win_put_count", 1, origin.nbytes)
        return int(result[0])

    def put_count(self, rank: int) -> int:
        """How many puts and accumulates ``rank`` (this rank or an in-neighbour) has completed
        on this window, read now without ``rank`` taking part."""
        return self._fetch_and_op(rank, 0, self.MPI.NO_OP)

    def fetch(self, source: int) -> tuple[torch.Tensor, float]:
        MPI = self.MPI
        out = torch.empty(self.numel, dtype=self.store_dtype)
        pbuf = np.zeros(1, dtype=np.float64)
        with self.thread_lock:
            self.win.Lock(source, MPI.LOCK_SHARED)
            self.win.Get([out.view(torch.uint8).numpy(), MPI.BYTE], source,
                         (_HEADER, self.data_bytes, MPI.BYTE))
            self.win.Get([pbuf, MPI.DOUBLE], source, (8, 1, MPI.DOUBLE))
            self.win.Unlock(source)
        WINDOWS.fetched(2, self.data_bytes + pbuf.nbytes)
        return out, float(pbuf[0])

    def publishes(self, tensor: torch.Tensor) -> bool:
        """True when ``tensor`` is block 0 (``win_memory``): copying it there would be a no-op."""
        return (self.adopted and tensor.data_ptr() == self.tensor.data_ptr()
                and tensor.is_contiguous() and tensor.dtype == self.store_dtype)

    # -- the operations (``asyncddp.comm.windows`` documents them) --
    def check_tensor(self, tensor, op: str) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise CommError(f"{op}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tuple(tensor.shape) != tuple(self.tensor.shape) or tensor.dtype != self.tensor.dtype:
            raise CommError(f"{op}({self.name!r}): tensor {tuple(tensor.shape)} {tensor.dtype} does "
                            f"not match the window's {tuple(self.tensor.shape)} {self.tensor.dtype}")

    def start_put(self, tensor, self_weight, dst_weights, require_mutex: bool, accumulate: bool,
                  with_p: bool, blocking: bool) -> Callable[[], None]:
        """Publish ``tensor`` (a put) and scale it by ``self_weight``, now; return the remote half,
        the deposits of ``tensor * w`` into each destination, to run now or on the window thread."""
        op = "win_accumulate" if accumulate else "win_put"
        self.check_tensor(tensor, op)
        dst = _weights(dst_weights, self.out_ranks, "out-neighbours", op, self.size)
        host = to_store(tensor, self.store_dtype)
        # A blocking put that leaves ``tensor`` alone sends straight from its memory; otherwise the
        # caller may change it (nonblocking) or we scale it (self_weight) before the deposits run.
        if not blocking or self_weight is not None:
            host = host.clone() if shares_memory(host, tensor) else host
        p_before = self.p
        if self.publishes(tensor):
            # The data already is block 0. Skip even the exclusive lock on ourselves unless p
            # changed: that lock waits for every remote epoch on this rank, e.g. the in-neighbour's
            # put happening at the same moment, which would serialise the two puts.
            if not accumulate and self.published_p != p_before:
                with self.local():
                    self._p(0)[0] = self.published_p = p_before
        elif not accumulate:
            with self.local():
                self._write(0, host, p_before)
        if self_weight is not None:
            with torch.no_grad():
                tensor.mul_(self_weight)
            if with_p:
                self.p *= float(self_weight)

        def deposits() -> None:  # the p sent is the one before self_weight scaled ours, like the data
            for target, weight in sorted(dst.items()):
                with self._mutex(require_mutex, target):
                    self.deposit(target, scaled(host, weight), p_before * weight, accumulate, with_p)
            # Counted once every deposit is complete (Unlock), so that a neighbour reading a
            # count of n knows the n-th put is in its buffer if it was sent there.
            self._fetch_and_op(self.rank, 1, self.MPI.SUM)

        return deposits

    def start_get(self, src_weights, require_mutex: bool) -> Callable[[], None]:
        """The pull of each in-neighbour's published value times ``w`` into its buffer here."""
        src = _weights(src_weights, self.in_ranks, "in-neighbours", "win_get", self.size)

        def pulls() -> None:
            for source, weight in sorted(src.items()):
                with self._mutex(require_mutex, source):
                    data, p = self.fetch(source)
                block = self.slot_of[source] + 1
                with self.local():
                    self._write(block, scaled(data, weight), p * weight)
                    self._header(block)[0] += 1

        return pulls

    def update(self, self_weight, neighbor_weights, reset: bool, clone: bool, require_mutex: bool,
               with_p: bool) -> torch.Tensor:
        """``self_weight * x + sum_j w_j * buf_j`` into the registered tensor (or a clone)."""
        self_weight, nbr = self._update_weights(self_weight, neighbor_weights)
        sources = sorted(nbr)
        with self._mutex(require_mutex, self.rank), self.local():
            tensor = self.tensor
            blocks = [self.slot_of[s] + 1 for s in sources]
            received = [self._data(block) for block in blocks]
            # A CPU tensor in the storage dtype, updated in place: combine straight into it.
            direct = (not clone and tensor.device.type == "cpu" and tensor.is_contiguous()
                      and tensor.dtype == self.store_dtype)
            mine = tensor.detach().view(-1) if direct else to_store(tensor, self.store_dtype)
            result = combine(mine, received, self_weight, [nbr[s] for s in sources],
                             out=mine if direct else None)  # fmt: skip
            p = self.p * self_weight
            for source, block in zip(sources, blocks):
                p += float(self._p(block)[0]) * nbr[source]
                self._header(block)[0] = 0
                if reset:
                    self._data(block).zero_()
                    self._p(block)[0] = 0.0
            if with_p:
                self.p = p
            target = tensor.clone() if clone else tensor
            if not direct:
                with torch.no_grad():
                    target.copy_(result.reshape(tensor.shape).to(tensor.dtype))
            if not clone and self.publishes(tensor):
                self._p(0)[0] = self.published_p = self.p
            elif not clone:
                self._write(0, to_store(tensor, self.store_dtype), self.p)
        return target

    def _update_weights(self, self_weight, neighbor_weights):
        if (self_weight is None) != (neighbor_weights is None):
            raise CommError("win_update: give self_weight and neighbor_weights together, or neither")
        if self_weight is not None:
            return float(self_weight), _weights(neighbor_weights, self.in_ranks, "in-neighbours", "win_update", self.size)
        self_weight, weights = self.default_weights
        return self_weight, dict(weights)

    def versions(self) -> dict[int, int]:
        with self.local():
            return {j: int(self._header(self.slot_of[j] + 1)[0]) for j in self.in_ranks}

    def memory_tensor(self) -> torch.Tensor:
        """Make block 0 the registered tensor (``win_memory``) and return it."""
        current = self.tensor
        if current.device.type != "cpu" or current.dtype != self.store_dtype:
            raise CommError(f"win_memory({self.name!r}): the window holds a {current.dtype} tensor on "
                            f"{current.device}; only CPU windows of float32, float64 or integer "
                            "tensors can expose their memory (half precision is stored as float32)")
        if not self.adopted:
            with self.local():
                published = self._data(0)
                published.copy_(to_store(current, self.store_dtype))
                self.tensor = published.view(current.shape)
                self.adopted = True
        return self.tensor

    @contextmanager
    def _mutex(self, required: bool, rank: int):
        """This window's mutex of ``rank`` held for the block, when ``required``."""
        if not required:
            yield
            return
        self.mutexes.acquire([rank])
        try:
            yield
        finally:
            self.mutexes.release([rank])

    def free(self) -> None:
        if self.adopted:  # the tensor win_memory returned stays valid: move it off MPI's memory
            fresh = self.tensor.clone()
            with torch.no_grad():
                self.tensor.set_(fresh.untyped_storage(), 0, fresh.shape, fresh.stride())
        self.mutexes.free()
        self.win.Free()
        self.comm.Free()
