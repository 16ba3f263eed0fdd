"""Ending mpirun's session, by the launcher or, when the launcher is killed outright, by a guard.

mpirun runs in a session of its own, and every local rank stays in it (each in a process group of
its own). Ending a job is one rule, ``end_session``: SIGTERM to mpirun's process group (mpirun
passes it on to every rank, remote ones included, and ends), then SIGKILL to whatever is left of
the session after a grace time (ranks that ignore SIGTERM; Open MPI 4's and MPICH's launchers
may end without their ranks).

SIGKILL reaches no handler, so a launcher killed outright cannot apply that rule, and nothing
else would: Open MPI 4's mpirun, for one, goes on with its ranks. ``start`` therefore runs a
guard next to each job, ``python -m asyncddp.launcher.session_guard SESSION``: it waits for the
end of a pipe whose only writer is the launcher (the kernel closes it when the launcher dies)
and ends the session then, unless the launcher said ``done`` first. Its own session keeps a
Ctrl-C meant for the job away from it. Linux /proc only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["GRACE_S", "session_members", "children", "end_session", "start", "stop", "close_guard"]

GRACE_S = 2.0  # from SIGTERM to SIGKILL
_DONE = b"done"


def _process_table() -> list[tuple[int, int, int]]:
    """(pid, parent pid, session) of every live (not zombie) process."""
    table = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table.append((int(entry.name), int(fields[1]), int(fields[3])))
    return table


def session_members(session: int) -> list[int]:
    """The live processes of ``session``."""
    return [pid for pid, _, member_of in _process_table() if member_of == session]


def children(parent: int) -> list[int]:
    """The live child processes of ``parent``."""
    return [pid for pid, parent_pid, _ in _process_table() if parent_pid == parent]


def end_session(session: int, grace: float = GRACE_S) -> None:
    """SIGTERM to the process group ``session`` leads, SIGKILL to what is left of the session
    after ``grace`` seconds, again until nothing of it runs (zombies aside) or 5 s more passed.

    Signals go only while the session has a live member: Linux does not hand out a number still
    in use as a session or group id, so no other process can be hit, even after mpirun was reaped."""
    if session_members(session):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(session, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while session_members(session) and time.monotonic() < deadline:
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while (members := session_members(session)) and time.monotonic() < deadline:
        for pid in members:  # a member may still fork: list again until none is left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def start(session: int) -> subprocess.Popen | None:
    """The guard of ``session`` (mpirun's pid); None if it cannot start (the job then runs
    unguarded, as it would without this module)."""
    try:
        return subprocess.Popen([sys.executable, "-m", "asyncddp.launcher.session_guard", str(session)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    except OSError:
        return None


def stop(guard: subprocess.Popen | None) -> None:
    """Tell the guard the launcher has ended the session itself, and let it go."""
    if guard is not None:
        close_guard(guard, _DONE)


def close_guard(guard: subprocess.Popen, said: bytes = b"") -> None:
    """Write ``said`` to a guard process's pipe, close it and wait for the guard to end (both
    guards, this one and ``netns``'s, wait for the end of that pipe)."""
    with contextlib.suppress(OSError):
        guard.stdin.write(said)
    with contextlib.suppress(OSError):
        guard.stdin.close()
    try:
        guard.wait(10)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()


def _guard_main(session: int) -> None:
    said = sys.stdin.buffer.read()  # returns at EOF: the launcher closed the pipe or died
    if said != _DONE:
        end_session(session)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].isdigit() and int(sys.argv[1]) > 1:
        _guard_main(int(sys.argv[1]))
    else:
        sys.exit("usage: python -m asyncddp.launcher.session_guard SESSION")
