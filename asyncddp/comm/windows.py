"""One-sided windows: the asynchronous half of asyncddp (BlueFog's window API on MPI-3 RMA).

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
Nonblocking variants run on one window thread when MPI grants ``THREAD_MULTIPLE`` (ordered,
one RMA epoch per target at a time through a per-window lock), else inline.

Half precision: MPI has no float16/bfloat16 reduction type, so windows of those dtypes keep
float32 memory (``reduction_dtype``) and convert at the edges; ``win_accumulate`` then sums in
float32 and rounds once when ``win_update`` writes the result back. CUDA tensors are staged
through host memory. Versions: +1 per put/accumulate/get into a buffer, 0 after a
``win_update`` read it. ``win_get`` reads each source's value as of its last ``win_create``,
``win_update`` or ``win_put``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

from asyncddp.comm.buffers import reduction_dtype
from asyncddp.comm.context import get_context
from asyncddp.comm.win_mutex import RankMutexes
from asyncddp.errors import CommError
from asyncddp.topology.analysis import in_neighbors, out_neighbors, recv_weights

__all__ = [
    "win_create", "win_free", "win_put", "win_put_nonblocking", "win_get", "win_get_nonblocking",
    "win_accumulate", "win_accumulate_nonblocking", "win_update", "win_update_then_collect",
    "get_win_version", "win_mutex", "win_wait", "win_poll", "win_associated_p",
    "turn_on_win_ops_with_associated_p", "turn_off_win_ops_with_associated_p", "win_memory",
]

_HEADER = 16  # int64 version + float64 associated p
_WITH_P = {"on": False}  # BlueFog's global switch for carrying p through window ops
_MPI_TYPES = {
    torch.float32: "FLOAT", torch.float64: "DOUBLE", torch.int64: "INT64_T",
    torch.int32: "INT32_T", torch.int16: "INT16_T", torch.int8: "INT8_T", torch.uint8: "UINT8_T",
}
_executor: dict = {}


class WinHandle:
    """Handle of a nonblocking window op: ``wait()`` returns True, ``done()`` never blocks."""

    def __init__(self, future=None, error: BaseException | None = None) -> None:
        self._future = future
        self._error = error

    def done(self) -> bool:
        return self._future is None or self._future.done()

    def wait(self) -> bool:
        if self._error is not None:
            raise self._error
        if self._future is not None:
            self._future.result()
        return True


class Window:
    """The per-name state: MPI windows, slot maps and the registered tensor."""

    def __init__(self, tensor, name, zero_init, ctx) -> None:
        from mpi4py import MPI

        self.MPI, self.name, self.tensor = MPI, name, tensor
        self.comm = ctx.comm.Dup()  # private: never matched against the engine's collectives
        self.rank = self.comm.Get_rank()
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
        self.mpi_type = getattr(MPI, _MPI_TYPES[self.store_dtype])
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
        host = _to_store(tensor, self.store_dtype)
        with self.local():
            self._write(0, host, 1.0)
            for k in range(len(self.in_ranks)):
                self._write(k + 1, torch.zeros_like(host) if zero_init else host,
                            0.0 if zero_init else 1.0)
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
    def deposit(self, target: int, payload: torch.Tensor, p: float, accumulate: bool) -> None:
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
            if _WITH_P["on"]:
                pbuf = [np.array([p], dtype=np.float64), MPI.DOUBLE]
                op = MPI.SUM if accumulate else MPI.REPLACE
                self.win.Accumulate(pbuf, target, (start + 8, 1, MPI.DOUBLE), op)
            self.win.Accumulate([one, MPI.INT64_T], target, (start, 1, MPI.INT64_T), MPI.SUM)
            self.win.Unlock(target)

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
        return out, float(pbuf[0])

    def publishes(self, tensor: torch.Tensor) -> bool:
        """True when ``tensor`` is block 0 (``win_memory``): copying it there would be a no-op."""
        return (self.adopted and tensor.data_ptr() == self.tensor.data_ptr()
                and tensor.is_contiguous() and tensor.dtype == self.store_dtype)

    def free(self) -> None:
        if self.adopted:  # the tensor win_memory returned stays valid: move it off MPI's memory
            fresh = self.tensor.clone()
            with torch.no_grad():
                self.tensor.set_(fresh.untyped_storage(), 0, fresh.shape, fresh.stride())
        self.mutexes.free()
        self.win.Free()
        self.comm.Free()


# ---------------------------------------------------------------------------------------------
def _to_store(tensor: torch.Tensor, store_dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` flat on the host in the window's storage dtype (stages CUDA through host); no
    copy when it already is (check ``_shares_memory`` before changing either)."""
    return tensor.detach().to(device="cpu", dtype=store_dtype).contiguous().reshape(-1)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _window(name: str, op: str) -> Window:
    windows = get_context().windows
    if name not in windows:
        known = ", ".join(sorted(windows)) or "none"
        raise CommError(f"{op}: no window named {name!r} (live windows: {known}); "
                        "create it with win_create(tensor, name) on every rank first")
    return windows[name]


def _check_tensor(win: Window, tensor, op: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise CommError(f"{op}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(win.tensor.shape) or tensor.dtype != win.tensor.dtype:
        raise CommError(f"{op}({win.name!r}): tensor {tuple(tensor.shape)} {tensor.dtype} does "
                        f"not match the window's {tuple(win.tensor.shape)} {win.tensor.dtype}")


def _weights(weights, allowed: list[int], what: str, op: str) -> dict[int, float]:
    if weights is None:
        return {r: 1.0 for r in allowed}
    if not isinstance(weights, dict):
        weights = {r: 1.0 for r in weights}
    extra = sorted(set(weights) - set(allowed))
    if extra:
        raise CommError(f"{op}: ranks {extra} are not {what} of this rank (those are {allowed}); "
                        "pass weights only for them")
    return {int(r): float(w) for r, w in weights.items()}


def _scaled(host: torch.Tensor, weight: float) -> torch.Tensor:
    if weight == 1.0:
        return host
    return (host.to(torch.float64) * weight).to(host.dtype) if not host.is_floating_point() \
        else host * weight


def _run(fn, *args) -> WinHandle:
    """Run ``fn`` on the window thread when MPI allows threads, else inline (already done)."""
    from mpi4py import MPI

    if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
        try:
            fn(*args)
        except BaseException as error:  # surfaced by wait(), like a threaded op's error
            return WinHandle(error=error)
        return WinHandle()
    if "pool" not in _executor:
        _executor["pool"] = ThreadPoolExecutor(1, thread_name_prefix="asyncddp-win")
    return WinHandle(_executor["pool"].submit(fn, *args))


def _drain() -> None:
    pool = _executor.pop("pool", None)
    if pool is not None:
        pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
def win_create(tensor: torch.Tensor, name: str, zero_init: bool = False) -> bool:
    """Create window ``name`` for ``tensor`` (collective): one buffer per in-neighbour."""
    ctx = get_context()
    if not isinstance(name, str) or not name:
        raise CommError(f"win_create: name must be a non-empty string, got {name!r}")
    if name in ctx.windows:
        raise CommError(f"win_create: a window named {name!r} exists; win_free({name!r}) first")
    if not isinstance(tensor, torch.Tensor) or reduction_dtype(tensor.dtype) not in _MPI_TYPES:
        raise CommError(f"win_create({name!r}): windows support float16, bfloat16, float32, "
                        f"float64 and integer tensors, got {getattr(tensor, 'dtype', tensor)!r}")
    if not ctx.windows and not any(f is _free_all for f in ctx.finalizers):
        ctx.finalizers.append(_free_all)
    ctx.windows[name] = Window(tensor, name, zero_init, ctx)
    return True


def win_memory(name: str) -> torch.Tensor:
    """Make window ``name``'s published block its registered tensor, and return that tensor.

    The result (the registered tensor's shape and dtype, on the CPU) is the memory that
    in-neighbours' ``win_get`` reads, so ``win_put`` of it and ``win_update`` no longer copy the
    tensor there: one pass over memory less for each (``DistributedWinPutOptimizer`` keeps its
    parameters in it). From now on ``win_update`` writes into it, and a concurrent ``win_get``
    sees writes to it at once rather than at the next put or update (as in BlueFog, whose
    windows expose the tensor's own memory). ``win_free`` moves the returned tensor to ordinary
    memory; views of it must not be used after ``win_free``. Not collective. CPU windows whose
    dtype is stored as is (float32, float64, integers) only.
    """
    win = _window(name, "win_memory")
    current = win.tensor
    if current.device.type != "cpu" or current.dtype != win.store_dtype:
        raise CommError(f"win_memory({name!r}): the window holds a {current.dtype} tensor on "
                        f"{current.device}; only CPU windows of float32, float64 or integer "
                        "tensors can expose their memory (half precision is stored as float32)")
    if not win.adopted:
        with win.local():
            published = win._data(0)
            published.copy_(_to_store(current, win.store_dtype))
            win.tensor = published.view(current.shape)
            win.adopted = True
    return win.tensor


def _free_all() -> None:
    win_free(None)


def win_free(name: str | None = None) -> bool:
    """Free window ``name``, or every window when ``name`` is None (collective)."""
    ctx = get_context()
    _drain()
    names = sorted(ctx.windows) if name is None else [_window(name, "win_free").name]
    for key in names:
        ctx.windows.pop(key).free()
    return True


def _put(win, host, p, dst, accumulate, require_mutex) -> None:
    for target, weight in sorted(dst.items()):
        if require_mutex:
            win.mutexes.acquire([target])
        try:
            win.deposit(target, _scaled(host, weight), p * weight, accumulate)
        finally:
            if require_mutex:
                win.mutexes.release([target])


def _start_put(tensor, name, self_weight, dst_weights, require_mutex, accumulate, blocking=False):
    op = "win_accumulate" if accumulate else "win_put"
    win = _window(name, op)
    _check_tensor(win, tensor, op)
    dst = _weights(dst_weights, win.out_ranks, "out-neighbours", op)
    host = _to_store(tensor, win.store_dtype)
    # A blocking put that leaves ``tensor`` alone sends straight from its memory; otherwise the
    # caller may change it (nonblocking) or we scale it (self_weight) before the put runs.
    if not blocking or self_weight is not None:
        host = host.clone() if _shares_memory(host, tensor) else host
    p_before = win.p
    if win.publishes(tensor):
        # The data already is block 0. Skip even the exclusive lock on ourselves unless p
        # changed: that lock waits for every remote epoch on this rank, e.g. the in-neighbour's
        # put happening at the same moment, which would serialise the two puts.
        if not accumulate and win.published_p != p_before:
            with win.local():
                win._p(0)[0] = win.published_p = p_before
    elif not accumulate:
        with win.local():
            win._write(0, host, p_before)
    if self_weight is not None:
        with torch.no_grad():
            tensor.mul_(self_weight)
        if _WITH_P["on"]:
            win.p *= float(self_weight)

    # the p sent is the one before self_weight scaled ours, like the data
    return lambda: _put(win, host, p_before, dst, accumulate, require_mutex)


def win_put_nonblocking(tensor, name, self_weight=None, dst_weights=None, require_mutex=False):
    """Start writing ``tensor * w`` into this rank's buffer on each destination."""
    return _run(_start_put(tensor, name, self_weight, dst_weights, require_mutex, False))


def win_put(tensor, name, self_weight=None, dst_weights=None, require_mutex=False) -> bool:
    """Write ``tensor * w`` into this rank's buffer on each destination (default all
    out-neighbours, w=1), then scale ``tensor`` in place by ``self_weight`` if given."""
    _start_put(tensor, name, self_weight, dst_weights, require_mutex, False, blocking=True)()
    return True


def win_accumulate_nonblocking(tensor, name, self_weight=None, dst_weights=None,
                               require_mutex=False):
    """Start adding ``tensor * w`` into this rank's buffer on each destination."""
    return _run(_start_put(tensor, name, self_weight, dst_weights, require_mutex, True))


def win_accumulate(tensor, name, self_weight=None, dst_weights=None, require_mutex=False) -> bool:
    """Add ``tensor * w`` into this rank's buffer on each destination (default all
    out-neighbours, w=1), then scale ``tensor`` in place by ``self_weight`` if given."""
    _start_put(tensor, name, self_weight, dst_weights, require_mutex, True, blocking=True)()
    return True


def _start_get(name, src_weights, require_mutex):
    win = _window(name, "win_get")
    src = _weights(src_weights, win.in_ranks, "in-neighbours", "win_get")

    def body():
        for source, weight in sorted(src.items()):
            if require_mutex:
                win.mutexes.acquire([source])
            try:
                data, p = win.fetch(source)
            finally:
                if require_mutex:
                    win.mutexes.release([source])
            block = win.slot_of[source] + 1
            with win.local():
                win._write(block, _scaled(data, weight), p * weight)
                win._header(block)[0] += 1

    return body


def win_get_nonblocking(name, src_weights=None, require_mutex=False):
    """Start pulling in-neighbours' published values into the local buffers."""
    return _run(_start_get(name, src_weights, require_mutex))


def win_get(name, src_weights=None, require_mutex=False) -> bool:
    """Pull each in-neighbour's published value times ``w`` into its local buffer."""
    _start_get(name, src_weights, require_mutex)()
    return True


def win_update(name, self_weight=None, neighbor_weights=None, reset=False, clone=False,
               require_mutex=False) -> torch.Tensor:
    """``self_weight * x + sum_j w_j * buf_j`` written into the registered tensor (returned).

    Without weights: the topology's weights when it is weighted, else uniform averaging over
    self and in-neighbours. ``reset`` zeroes the buffers read; ``clone`` leaves the registered
    tensor alone and returns a new one; ``require_mutex`` takes this rank's window mutex.
    """
    win = _window(name, "win_update")
    self_weight, nbr = _update_weights(win, self_weight, neighbor_weights)
    if require_mutex:
        win.mutexes.acquire([win.rank])
    try:
        with win.local():
            tensor = win.tensor
            # Common case (a CPU tensor in the storage dtype, updated in place): accumulate
            # straight into it, one pass per term, no temporaries.
            direct = (not clone and tensor.device.type == "cpu" and tensor.is_contiguous()
                      and tensor.dtype == win.store_dtype and tensor.dtype.is_floating_point)
            if direct:
                result = tensor.detach().view(-1)
                if self_weight != 1.0:
                    result.mul_(self_weight)
            else:
                acc_dtype = torch.float64 if not win.store_dtype.is_floating_point else win.store_dtype
                result = _to_store(tensor, win.store_dtype).to(acc_dtype) * self_weight
            p = win.p * self_weight
            for source, weight in sorted(nbr.items()):
                block = win.slot_of[source] + 1
                data = win._data(block)
                if direct:
                    result.add_(data, alpha=weight)
                else:
                    result += data.to(result.dtype) * weight
                p += float(win._p(block)[0]) * weight
                win._header(block)[0] = 0
                if reset:
                    win._data(block).zero_()
                    win._p(block)[0] = 0.0
            if _WITH_P["on"]:
                win.p = p
            if direct:
                target = tensor
            else:
                target = tensor.clone() if clone else tensor
                with torch.no_grad():
                    target.copy_(result.reshape(tensor.shape).to(tensor.dtype))
            if not clone and win.publishes(tensor):
                win._p(0)[0] = win.published_p = win.p
            elif not clone:
                win._write(0, _to_store(tensor, win.store_dtype), win.p)
    finally:
        if require_mutex:
            win.mutexes.release([win.rank])
    return target


def _update_weights(win, self_weight, neighbor_weights):
    if (self_weight is None) != (neighbor_weights is None):
        raise CommError("win_update: give self_weight and neighbor_weights together, or neither")
    if self_weight is not None:
        return float(self_weight), _weights(neighbor_weights, win.in_ranks, "in-neighbours",
                                            "win_update")
    self_weight, weights = win.default_weights
    return self_weight, dict(weights)


def win_update_then_collect(name, require_mutex=False) -> torch.Tensor:
    """``win_update(name, 1.0, {every in-neighbour: 1.0}, reset=True)``: the push-sum step."""
    win = _window(name, "win_update_then_collect")
    return win_update(name, 1.0, {j: 1.0 for j in win.in_ranks}, reset=True,
                      require_mutex=require_mutex)


def get_win_version(name) -> dict[int, int]:
    """``{in-neighbour rank: number of puts/accumulates/gets since its buffer was last read}``."""
    win = _window(name, "get_win_version")
    with win.local():
        return {j: int(win._header(win.slot_of[j] + 1)[0]) for j in win.in_ranks}


@contextmanager
def win_mutex(name, for_self=False, ranks=None):
    """Hold the window mutexes of ``ranks`` (default: out-neighbours; ``for_self``: this rank)."""
    win = _window(name, "win_mutex")
    chosen = [win.rank] if for_self else (win.out_ranks if ranks is None else list(ranks))
    size = win.comm.Get_size()
    if any(not isinstance(r, int) or not 0 <= r < size for r in chosen):
        raise CommError(f"win_mutex: ranks {chosen} must be integers in 0..{size - 1}")
    win.mutexes.acquire(chosen)
    try:
        yield
    finally:
        win.mutexes.release(chosen)


def win_wait(handle) -> bool:
    """Block until a nonblocking window op is over (re-raises its error)."""
    return handle.wait()


def win_poll(handle) -> bool:
    """True when ``win_wait(handle)`` would not block."""
    return handle.done()


def win_associated_p(name) -> float:
    """The push-sum weight carried with window ``name`` (1.0 at creation)."""
    return _window(name, "win_associated_p").p


def turn_on_win_ops_with_associated_p() -> None:
    """Make put/accumulate/update carry each window's associated p (BlueFog's global switch)."""
    _WITH_P["on"] = True


def turn_off_win_ops_with_associated_p() -> None:
    _WITH_P["on"] = False
