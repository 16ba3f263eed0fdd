"""What every part of the BlueFog layer shares: ``BlueFogError``, the re-raising of asyncddp's
misuse errors as that error, the table of BlueFog's integer handles and the negotiation-stage
switch. ``bluefog``, ``_bf_windows``, ``_bf_optimizers`` and ``topology_util`` import it, so each
of them can be imported on its own.
"""

from __future__ import annotations

import functools
import itertools
import threading

from asyncddp.errors import AsyncDDPError, CommError, NotInitializedError

__all__ = ["BlueFogError", "set_skip_negotiate_stage", "get_skip_negotiate_stage"]


class BlueFogError(AsyncDDPError, ValueError):
    """What BlueFog raises as ``ValueError``: a misused op, a mismatched pattern, no init()."""


def _bf_errors(fn):
    """Re-raise asyncddp's misuse errors as ``BlueFogError`` (a ``ValueError``), message kept."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CommError, NotInitializedError) as error:
            raise BlueFogError(str(error)) from error

    return wrapper


# --- integer handles ----------------------------------------------------------------------------

_handles: dict[int, object] = {}
_handle_ids = itertools.count(1)
_handle_lock = threading.Lock()


def _register(handle) -> int:
    with _handle_lock:
        number = next(_handle_ids)
        _handles[number] = handle
    return number


def _lookup(handle: int, pop: bool):
    with _handle_lock:
        found = _handles.pop(handle, None) if pop else _handles.get(handle)
    if found is None:
        raise BlueFogError(f"handle {handle!r} is unknown or was already synchronized; "
                           "pass the int a *_nonblocking call returned, once")
    return found


_skip_negotiate = False


def set_skip_negotiate_stage(value: bool) -> None:
    """BlueFog negotiated op order through a coordinator; asyncddp needs no such stage (every
    rank issues ops in program order). One effect of BlueFog's stage is kept: while it is on
    (the default), ``DistributedWinPutOptimizer``s built keep each rank in step with its
    in-neighbours; built with the stage skipped, they run fully asynchronously."""
    global _skip_negotiate
    _skip_negotiate = bool(value)


def get_skip_negotiate_stage() -> bool:
    return _skip_negotiate
