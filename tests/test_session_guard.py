"""The session guard ends a job's session when the launcher dies, and leaves it when told ``done``.

A launcher killed outright is tested end to end in ``test_run_signals.py``; here a stand-in
session (a shell with a child, in a session of its own) shows both answers of the guard itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from asyncddp.launcher import session_guard
from tests.mpi_helpers import pid_is_running


def _session() -> tuple[subprocess.Popen, int]:
    """A session leader that ignores SIGTERM (as some ranks do) with a child in a process group of
    its own (as mpirun's ranks are), which the leader's group signal does not reach."""
    code = ("import os, signal, subprocess; child = subprocess.Popen(['sleep', '60'], preexec_fn=os.setpgrp); "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(child.pid, flush=True); child.wait()")
    leader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(leader.stdout.readline())
    assert os.getpgid(child) == child != os.getpgid(leader.pid)
    return leader, child


def test_done_leaves_the_session_running():
    leader, child = _session()
    try:
        guard = session_guard.start(leader.pid)
        started = time.monotonic()
        session_guard.stop(guard)
        assert guard.returncode == 0 and time.monotonic() - started < 5
        assert sorted(session_guard.session_members(leader.pid)) == sorted([leader.pid, child])
    finally:
        session_guard.end_session(leader.pid, grace=0)
        leader.wait()


def test_a_pipe_closed_without_done_ends_every_member_of_the_session():
    leader, child = _session()
    guard = session_guard.start(leader.pid)
    guard.stdin.close()  # what the kernel does when the launcher dies
    assert guard.wait(10) == 0
    assert leader.wait(1) == -signal.SIGKILL  # it ignored SIGTERM: killed after the grace time
    assert not pid_is_running(child)
    assert session_guard.session_members(leader.pid) == []
