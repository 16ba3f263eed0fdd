"""Handles of nonblocking operations: ``synchronize(handle)`` and ``poll(handle)``.

Every ``*_nonblocking`` function returns an object with two methods, ``wait()`` (block until the
operation is over and return its result, re-raising its error) and ``done()`` (true once
``wait()`` would not block). ``synchronize``/``poll`` work on any such object, so the handles of
one-sided window operations and of queued collective operations are used the same way.
``OpHandle`` is the future the communication thread completes (see ``asyncddp.comm.engine``).
"""

from __future__ import annotations

import threading
from typing import Any

from asyncddp import exported_by
from asyncddp.errors import CommError

__all__ = [*exported_by(__name__), "OpHandle"]


class OpHandle:
    """A future for one queued operation, completed by the communication thread."""

    __slots__ = ("op_name", "_event", "_result", "_error", "_before_block", "_on_raise")

    def __init__(self, op_name: str, before_block=None, on_raise=None) -> None:
        self.op_name = op_name
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        # Called when a wait would block: lets a paused engine run the op instead of hanging.
        self._before_block = before_block
        # Called with the error before wait() raises it: tells the engine the program saw it.
        self._on_raise = on_raise

    def set_result(self, result: Any) -> None:
        self._result = result
        self._event.set()

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self) -> Any:
        if self._before_block is not None and not self._event.is_set():
            self._before_block()
        self._event.wait()
        if self._error is not None:
            if self._on_raise is not None:
                self._on_raise(self._error)
            raise self._error
        return self._result

    def __repr__(self) -> str:
        return f"<OpHandle {self.op_name} {'done' if self.done() else 'pending'}>"


def _check(handle) -> None:
    if not (callable(getattr(handle, "wait", None)) and callable(getattr(handle, "done", None))):
        raise CommError(
            f"expected a handle returned by an asyncddp *_nonblocking function, got "
            f"{type(handle).__name__}"
        )


def synchronize(handle) -> Any:
    """Block until the operation behind ``handle`` is over and return its result."""
    _check(handle)
    return handle.wait()


# BlueFog spells it both ways.
wait = synchronize


def poll(handle) -> bool:
    """True when ``synchronize(handle)`` would return without blocking. Never blocks."""
    _check(handle)
    return bool(handle.done())
