"""The guard around each rank of a fault-tolerant job: ``python -m asyncddp.launcher.rank_guard CMD...``.

mpirun under ULFM keeps quiet about a rank it lost (it exits 0 when the others finish), so the
launcher could not say which rank died, when or how. The guard runs the rank's command as its
child and, when the child ends, writes one line to stderr
(``asyncddp.comm.rank_report.rank_end_line``) that reaches the launcher through mpirun's tagged
output: the rank finished, or it was lost with its exit code or signal.

A rank that ended badly is then reported to mpirun as a killed process (the guard SIGKILLs
itself), never as a non-zero exit: Open MPI 5 answers a non-zero exit by aborting the job, and its
survivors then spin in ``MPI_Finalize`` waiting for the lost rank, while a killed process is a
failure ULFM announces to the survivors at once.

Signals need no forwarding: mpirun signals each rank's whole process group, which holds the
guard and its child; the guard only has to outlive them to report how the child ended. The child
dies with the guard (``PR_SET_PDEATHSIG``), so a killed guard leaves no rank running on its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

from asyncddp.comm.rank_report import rank_end_line

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a killed guard may then leave its child behind
        pass


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m asyncddp.launcher.rank_guard COMMAND [ARGS]", file=sys.stderr)
        return 2
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "-1")))
    # Python handlers, not SIG_IGN: the child starts with default dispositions (exec resets handlers).
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, lambda *_: None)
    try:
        child = subprocess.Popen(argv, preexec_fn=_die_with_parent)
    except OSError as error:
        print(f"asyncddp: rank {rank}: cannot start {argv[0]} ({error})", file=sys.stderr, flush=True)
        code = 127
    else:
        code = child.wait()
    print(rank_end_line(rank, code), file=sys.stderr, flush=True)
    if code != 0:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
