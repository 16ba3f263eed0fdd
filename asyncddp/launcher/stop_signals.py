"""How the commands that start ranks react to SIGINT, SIGTERM and SIGHUP: one policy for all of them.

Ctrl-C sends SIGINT; ``kill``, ``timeout``, Slurm's ``scancel`` and CI cancellation send SIGTERM; a
closed terminal sends SIGHUP. Python dies on the spot from the last two, skipping every ``finally``,
and mpirun runs in a session of its own (so a Ctrl-C meant for the launcher reaches the launcher
only): without a policy, mpirun and every rank outlive the launcher, and its temporary directory and
emulated namespaces stay behind.

``handled()`` installs one handler for the three while a command that starts ranks runs (nested
uses share it; only the main thread can install handlers, elsewhere it does nothing; a signal the
process was started ignoring, as under ``nohup``, stays ignored). Outside a job
the handler raises ``Stopped``, a ``SystemExit`` carrying 128+signal: no ``except Exception``
swallows it, every ``finally`` on the way out runs (temporary directories, namespaces), the CLI
prints it as one line, and uncaught it still exits with the shell's code for that signal.

Inside ``deferred()`` the handler only records the signal. The job's watch loop runs there and polls
it: an exception raised wherever the main thread happens to be can land inside ``Popen.poll()``
between taking and releasing Popen's waitpid lock, after which every ``wait()`` blocks forever.
Cleanup runs there too, so a second signal cannot cut it short; a signal nobody took (``take()``)
is raised as ``Stopped`` when the block ends.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator

__all__ = ["STOP_SIGNALS", "Stopped", "Deferral", "describe", "handled", "deferred", "private_dir"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def describe(signum: int) -> str:
    """How a stop by ``signum`` reads in the launcher's last line."""
    if signum == signal.SIGINT:
        return "interrupted (Ctrl-C)"
    return f"stopped by {signal.Signals(signum).name}"


class Stopped(SystemExit):
    """A stop signal arrived outside a job's watch loop; exits with 128+signal unless caught."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = describe(signum) + (f"; {detail}" if detail else "")

    def __str__(self) -> str:
        return self.message


class Deferral:
    """The signal a ``deferred()`` block received, if any; ``wait`` lets a loop poll for it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self.taken = False

    def record(self, signum: int) -> None:
        if self.signum is None:  # the first one says why the job stopped
            self.signum = signum
        self._event.set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)

    def take(self) -> int | None:
        """The signal, marked as acted on (so the block's end does not raise it again)."""
        self.taken = True
        return self.signum


class _Policy:
    def __init__(self) -> None:
        self.depth = 0
        self.previous: dict[int, object] = {}
        self.deferrals: list[Deferral] = []

    def handle(self, signum: int, frame) -> None:
        if self.deferrals:
            self.deferrals[-1].record(signum)
            return
        raise Stopped(signum)


_policy = _Policy()


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Stop signals raise ``Stopped`` (or are recorded, inside ``deferred()``) until the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _policy.depth == 0:
        # A signal ignored when we started stays ignored: nohup ignores SIGHUP, and a shell
        # script ignores SIGINT for the jobs it puts in the background.
        _policy.previous = {signum: signal.signal(signum, _policy.handle) for signum in STOP_SIGNALS
                            if signal.getsignal(signum) is not signal.SIG_IGN}
    _policy.depth += 1
    try:
        yield
    finally:
        _policy.depth -= 1
        if _policy.depth == 0:
            for signum, previous in _policy.previous.items():
                signal.signal(signum, previous)


@contextlib.contextmanager
def deferred() -> Iterator[Deferral]:
    """Record stop signals instead of raising them; one not ``take()``-n is raised at the end."""
    deferral = Deferral()
    with handled():
        _policy.deferrals.append(deferral)
        try:
            yield deferral
        finally:
            _policy.deferrals.remove(deferral)
        if deferral.signum is not None and not deferral.taken:
            raise Stopped(deferral.signum)


@contextlib.contextmanager
def private_dir(prefix: str) -> Iterator[str]:
    """A new 0700 directory for one job, removed at the end even when a signal stops the command."""
    with handled():
        path = tempfile.mkdtemp(prefix=prefix)
        try:
            yield path
        finally:
            with deferred():
                shutil.rmtree(path, ignore_errors=True)
