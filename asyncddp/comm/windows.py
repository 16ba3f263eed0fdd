"""One-sided windows: the asynchronous half of asyncddp (BlueFog's window API on MPI-3 RMA).

Each window is a ``asyncddp.comm.window_memory.Window``, which owns its memory (a published
block and one buffer per in-neighbour), its locks and the operations on it; the functions here
look a window up by name and call it. Integer windows average like every other integer
average (``asyncddp.comm.averaging``: nearest, ties to even). Nonblocking
variants run on one window thread when MPI grants ``THREAD_MULTIPLE`` (ordered, one RMA epoch
per target at a time through a per-window lock), else inline.

Half precision: MPI has no float16/bfloat16 reduction type, so windows of those dtypes keep
float32 memory (``reduction_dtype``) and convert at the edges; ``win_accumulate`` then sums in
float32 and rounds once when ``win_update`` writes the result back. CUDA tensors are staged
through host memory. Versions: +1 per put/accumulate/get into a buffer, 0 after a
``win_update`` read it. ``win_get`` reads each source's value as of its last ``win_create``,
``win_update`` or ``win_put`` (or at once, for a window whose tensor is ``win_memory``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from asyncddp import exported_by
from asyncddp.comm.buffers import reduction_dtype
from asyncddp.comm.context import get_context
from asyncddp.comm.neighbor_plan import as_rank
from asyncddp.comm.timeline import now_us
from asyncddp.comm.window_memory import MPI_TYPES, Window
from asyncddp.errors import CommError

__all__ = exported_by(__name__)

_WITH_P = {"on": False}  # BlueFog's global switch for carrying p through window ops
_executor: dict = {}
_observers: list = []  # see add_op_observer


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


def _no_window(name, op: str) -> str:
    known = ", ".join(sorted(get_context().windows)) or "none"
    return (f"{op}: no window named {name!r} (live windows: {known}); "
            "create it with win_create(tensor, name) on every rank first")


def _window(name: str, op: str) -> Window:
    windows = get_context().windows
    if name not in windows:
        raise CommError(_no_window(name, op))
    return windows[name]


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


def add_op_observer(fn) -> None:
    """Call ``fn(kind, window_name, start_us, end_us)`` after the remote half (the deposits or
    pulls) of every put, accumulate and get, on the thread that ran it; ``kind`` is
    ``"win_put"``, ``"win_accumulate"`` or ``"win_get"`` (BlueFog's timeline listens so)."""
    if fn not in _observers:
        _observers.append(fn)


def remove_op_observer(fn) -> None:
    if fn in _observers:
        _observers.remove(fn)


def _observed(kind: str, name: str, remote):
    """``remote`` reporting its span to the observers, or ``remote`` itself when none listen."""
    if not _observers:
        return remote

    def run() -> None:
        start = now_us()
        try:
            remote()
        finally:
            end = now_us()
            for fn in list(_observers):
                fn(kind, name, start, end)

    return run


def _drain() -> None:
    pool = _executor.pop("pool", None)
    if pool is not None:
        pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
def _agreed(ctx, problem: str | None, what: str) -> None:
    """Raise on every rank when any rank found a ``problem`` (its own text there, the failing
    ranks elsewhere): a collective that one rank refuses alone leaves the others waiting in it."""
    problems = ctx.comm.allgather(problem)
    if problem:
        raise CommError(problem)
    failed = [r for r, text in enumerate(problems) if text]
    if failed:
        raise CommError(f"{what}: refused on rank(s) {failed} ({problems[failed[0]]})")


def _create_problem(ctx, tensor, name) -> str | None:
    if not isinstance(name, str) or not name:
        return f"win_create: name must be a non-empty string, got {name!r}"
    if name in ctx.windows:
        return f"win_create: a window named {name!r} exists; win_free({name!r}) first"
    if not isinstance(tensor, torch.Tensor) or reduction_dtype(tensor.dtype) not in MPI_TYPES:
        return (f"win_create({name!r}): windows support float16, bfloat16, float32, "
                f"float64 and integer tensors, got {getattr(tensor, 'dtype', tensor)!r}")
    return None


def win_create(tensor: torch.Tensor, name: str, zero_init: bool = False) -> bool:
    """Create window ``name`` for ``tensor`` (collective): one buffer per in-neighbour. A name
    or tensor refused on any rank raises ``CommError`` on every rank."""
    ctx = get_context()
    _agreed(ctx, _create_problem(ctx, tensor, name), "win_create")
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
    return _window(name, "win_memory").memory_tensor()


def _free_all() -> None:
    win_free(None)


def win_free(name: str | None = None) -> bool:
    """Free window ``name``, or every window when ``name`` is None (collective). A name unknown
    on any rank raises ``CommError`` on every rank, and nothing is freed."""
    ctx = get_context()
    _drain()
    if name is None:  # nothing a rank could refuse alone
        names = sorted(ctx.windows)
    else:
        problem = None if name in ctx.windows else _no_window(name, "win_free")
        _agreed(ctx, problem, "win_free")
        names = [name]
    for key in names:
        ctx.windows.pop(key).free()
    return True


def _start_put(tensor, name, self_weight, dst_weights, require_mutex, accumulate, blocking):
    kind = "win_accumulate" if accumulate else "win_put"
    win = _window(name, kind)
    remote = win.start_put(tensor, self_weight, dst_weights, require_mutex, accumulate, _WITH_P["on"], blocking)
    return _observed(kind, win.name, remote)


def win_put_nonblocking(tensor, name, self_weight=None, dst_weights=None, require_mutex=False):
    """Start writing ``tensor * w`` into this rank's buffer on each destination."""
    return _run(_start_put(tensor, name, self_weight, dst_weights, require_mutex, False, False))


def win_put(tensor, name, self_weight=None, dst_weights=None, require_mutex=False) -> bool:
    """Write ``tensor * w`` into this rank's buffer on each destination (default all
    out-neighbours, w=1), then scale ``tensor`` in place by ``self_weight`` if given."""
    _start_put(tensor, name, self_weight, dst_weights, require_mutex, False, True)()
    return True


def win_accumulate_nonblocking(tensor, name, self_weight=None, dst_weights=None,
                               require_mutex=False):
    """Start adding ``tensor * w`` into this rank's buffer on each destination."""
    return _run(_start_put(tensor, name, self_weight, dst_weights, require_mutex, True, False))


def win_accumulate(tensor, name, self_weight=None, dst_weights=None, require_mutex=False) -> bool:
    """Add ``tensor * w`` into this rank's buffer on each destination (default all
    out-neighbours, w=1), then scale ``tensor`` in place by ``self_weight`` if given."""
    _start_put(tensor, name, self_weight, dst_weights, require_mutex, True, True)()
    return True


def win_get_nonblocking(name, src_weights=None, require_mutex=False):
    """Start pulling in-neighbours' published values into the local buffers."""
    return _run(_observed("win_get", name, _window(name, "win_get").start_get(src_weights, require_mutex)))


def win_get(name, src_weights=None, require_mutex=False) -> bool:
    """Pull each in-neighbour's published value times ``w`` into its local buffer."""
    _observed("win_get", name, _window(name, "win_get").start_get(src_weights, require_mutex))()
    return True


def win_update(name, self_weight=None, neighbor_weights=None, reset=False, clone=False,
               require_mutex=False) -> torch.Tensor:
    """``self_weight * x + sum_j w_j * buf_j`` written into the registered tensor (returned).

    Without weights: the topology's weights when it is weighted, else uniform averaging over
    self and in-neighbours. ``reset`` zeroes the buffers read; ``clone`` leaves the registered
    tensor alone and returns a new one; ``require_mutex`` takes this rank's window mutex.
    """
    return _window(name, "win_update").update(self_weight, neighbor_weights, reset, clone, require_mutex,
                                              _WITH_P["on"])  # fmt: skip


def win_update_then_collect(name, require_mutex=False) -> torch.Tensor:
    """``win_update(name, 1.0, {every in-neighbour: 1.0}, reset=True)``: the push-sum step."""
    win = _window(name, "win_update_then_collect")
    return win_update(name, 1.0, {j: 1.0 for j in win.in_ranks}, reset=True,
                      require_mutex=require_mutex)


def win_put_counts(name) -> dict[int, int]:
    """``{rank: puts and accumulates completed on window name}`` for this rank and each
    in-neighbour, read now one-sidedly (the in-neighbours take no part). A count includes a put
    only once all its deposits are complete."""
    win = _window(name, "win_put_counts")
    return {j: win.put_count(j) for j in sorted([win.rank, *win.in_ranks])}


def get_win_version(name) -> dict[int, int]:
    """``{in-neighbour rank: number of puts/accumulates/gets since its buffer was last read}``."""
    return _window(name, "get_win_version").versions()


@contextmanager
def win_mutex(name, for_self=False, ranks=None):
    """Hold the window mutexes of ``ranks`` (default: out-neighbours; ``for_self``: this rank)."""
    win = _window(name, "win_mutex")
    chosen = [win.rank] if for_self else (win.out_ranks if ranks is None else list(ranks))
    size = win.comm.Get_size()
    chosen = [as_rank(r, size, "win_mutex: rank") for r in chosen]
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
