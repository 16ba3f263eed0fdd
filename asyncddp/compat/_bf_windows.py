"""BlueFog's one-sided window API over ``asyncddp.comm.windows``. Re-exported by
``asyncddp.compat.bluefog``.

Nonblocking window ops return BlueFog's integer handles, which ``win_wait``/``win_poll`` (and
``synchronize``/``poll``) accept. ``neighbor_win_put/get/accumulate`` are the same functions under
the names BlueFog's docs also use.
"""

from __future__ import annotations

import contextlib

from asyncddp.comm import windows as _win
from asyncddp.comm.context import get_context
from asyncddp.compat._bf_timeline import enqueue_activity
from asyncddp.compat._bf_common import BlueFogError, _bf_errors, _lookup, _register

__all__ = [
    "win_create", "win_free", "win_update", "win_update_then_collect", "win_put", "win_put_nonblocking",
    "win_get", "win_get_nonblocking", "win_accumulate", "win_accumulate_nonblocking",
    "neighbor_win_put", "neighbor_win_put_nonblocking", "neighbor_win_get", "neighbor_win_get_nonblocking",
    "neighbor_win_accumulate", "neighbor_win_accumulate_nonblocking", "win_wait", "win_poll",
    "get_win_version", "get_current_created_window_names", "win_mutex", "win_associated_p",
    "turn_on_win_ops_with_associated_p", "turn_off_win_ops_with_associated_p",
]  # fmt: skip


@_bf_errors
def win_create(tensor, name: str, zero_init: bool = False) -> bool:
    """Collective: one buffer per in-neighbour, a copy of ``tensor`` (zeros with ``zero_init``)."""
    return _win.win_create(tensor, name, zero_init=zero_init)


@_bf_errors
def win_free(name: str | None = None) -> bool:
    return _win.win_free(name)


@_bf_errors
def win_update(name: str, self_weight=None, neighbor_weights=None, reset: bool = False, clone: bool = False,
               require_mutex: bool = False):
    return _win.win_update(name, self_weight, neighbor_weights, reset=reset, clone=clone,
                           require_mutex=require_mutex)


@_bf_errors
def win_update_then_collect(name: str, require_mutex: bool = True):
    """``win_update(name, 1.0, {every in-neighbour: 1.0}, reset=True)``."""
    return _win.win_update_then_collect(name, require_mutex=require_mutex)


@_bf_errors
@enqueue_activity("ENQUEUE_WIN_PUT")
def win_put_nonblocking(tensor, name: str, self_weight=None, dst_weights=None, require_mutex: bool = False) -> int:
    return _register(_win.win_put_nonblocking(tensor, name, self_weight, dst_weights, require_mutex))


@_bf_errors
@enqueue_activity("ENQUEUE_WIN_PUT")
def win_put(tensor, name: str, self_weight=None, dst_weights=None, require_mutex: bool = False) -> bool:
    return _win.win_put(tensor, name, self_weight, dst_weights, require_mutex)


@_bf_errors
@enqueue_activity("ENQUEUE_WIN_ACCUMULATE")
def win_accumulate_nonblocking(tensor, name: str, self_weight=None, dst_weights=None,
                               require_mutex: bool = False) -> int:
    return _register(_win.win_accumulate_nonblocking(tensor, name, self_weight, dst_weights, require_mutex))


@_bf_errors
@enqueue_activity("ENQUEUE_WIN_ACCUMULATE")
def win_accumulate(tensor, name: str, self_weight=None, dst_weights=None, require_mutex: bool = False) -> bool:
    return _win.win_accumulate(tensor, name, self_weight, dst_weights, require_mutex)


@_bf_errors
@enqueue_activity("ENQUEUE_WIN_GET")
def win_get_nonblocking(name: str, src_weights=None, require_mutex: bool = False) -> int:
    return _register(_win.win_get_nonblocking(name, src_weights, require_mutex))


@_bf_errors
@enqueue_activity("ENQUEUE_WIN_GET")
def win_get(name: str, src_weights=None, require_mutex: bool = False) -> bool:
    return _win.win_get(name, src_weights, require_mutex)


neighbor_win_put, neighbor_win_put_nonblocking = win_put, win_put_nonblocking
neighbor_win_get, neighbor_win_get_nonblocking = win_get, win_get_nonblocking
neighbor_win_accumulate, neighbor_win_accumulate_nonblocking = win_accumulate, win_accumulate_nonblocking


@_bf_errors
def win_wait(handle: int) -> bool:
    return _win.win_wait(_lookup(handle, pop=True))


@_bf_errors
def win_poll(handle: int) -> bool:
    return _win.win_poll(_lookup(handle, pop=False))


get_win_version = _bf_errors(_win.get_win_version)
win_associated_p = _bf_errors(_win.win_associated_p)
turn_on_win_ops_with_associated_p = _win.turn_on_win_ops_with_associated_p
turn_off_win_ops_with_associated_p = _win.turn_off_win_ops_with_associated_p


@_bf_errors
def get_current_created_window_names() -> list[str]:
    return sorted(get_context().windows)


@contextlib.contextmanager
def win_mutex(name: str, for_self: bool = False, ranks=None):
    """Hold the window mutexes of ``ranks`` (default out-neighbours; ``for_self``: this rank)."""
    try:
        manager = _win.win_mutex(name, for_self=for_self, ranks=ranks)
        manager.__enter__()
    except Exception as error:
        from asyncddp.errors import CommError, NotInitializedError

        if isinstance(error, (CommError, NotInitializedError)):
            raise BlueFogError(str(error)) from error
        raise
    try:
        yield
    finally:
        manager.__exit__(None, None, None)
