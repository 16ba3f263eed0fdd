"""``asyncddp run --emulate`` and the config's ``emulate:`` section, through the real CLI.

The dry-run shows the nodes, links and the mpirun command that runs on node 0; real runs finish,
time out and get interrupted like any job, and leave no namespace, file or process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from asyncddp.launcher import netns
from asyncddp.launcher.config import load_config
from asyncddp.launcher.emulate import PREFIX
from asyncddp.launcher.emulate_spec import EmulateSpec
from tests.mpi_helpers import ROOT
from tests.cli import asyncddp, asyncddp_argv, invoke

pytestmark = pytest.mark.timeout(120)

MACHINES = ("import socket\nimport asyncddp as addp\naddp.init()\n"
            "print('RANK', addp.rank(), addp.machine_rank(), socket.gethostname(), flush=True)\naddp.shutdown()\n")
SLEEPER = "import time\nimport asyncddp as addp\naddp.init()\nprint('UP', flush=True)\ntime.sleep(90)\n"


def _assert_clean(pid: int, marker: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _leftovers(pid, marker):
        time.sleep(0.2)
    assert _leftovers(pid, marker) == []


def _leftovers(pid: int, marker: str) -> list[str]:
    """What the run of CLI process ``pid`` left: namespaces, /etc/netns entries, processes with ``marker``."""
    prefix = f"{PREFIX}-{pid}-"
    found = [name for name in netns.list_namespaces() if name.startswith(prefix)]
    found += [str(path) for path in Path("/etc/netns").glob(f"{prefix}*")]
    found += [str(path) for path in netns.STATE_ROOT.glob(f"{prefix}*")]
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in entry.joinpath("cmdline").read_bytes().decode(errors="replace"):
                found.append(f"process {entry.name}")
        except OSError:
            continue
    return found


@pytest.fixture
def root_only():
    reason = netns.netns_missing_reason()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)


def test_dry_run_shows_nodes_links_and_the_command(tmp_path):
    (tmp_path / "m.py").write_text(MACHINES)
    done = invoke("run", "--emulate", "nodes=2,ranks_per_node=2,bandwidth=1gbit,slow_node=1:500mbit", "--dry-run",
                "m.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("emulated cluster nodes=2,ranks_per_node=2,bandwidth=1gbit,slow_node=1:500mbit")
    assert lines[1].split()[:2] == ["emu0", lines[1].split()[1]] and lines[1].endswith("2 rank(s), link 1gbit")
    assert lines[2].endswith("2 rank(s), link 500mbit")
    assert "setup commands:" in lines and "--host emu0:2,emu1:2 \\" in done.stdout
    as_json = json.loads(invoke("run", "--emulate", "nodes=2,ranks_per_node=2", "--dry-run", "--json", "m.py",
                              cwd=tmp_path).stdout)
    tag = as_json["emulate"]["tag"]
    argv = as_json["argv"]
    assert argv[:4] == ["ip", "netns", "exec", f"{tag}-n0"] and argv[argv.index("--host") + 1] == "emu0:2,emu1:2"
    assert argv[argv.index("plm_ssh_agent") + 1] == f"/run/asyncddp-netns/{tag}/agent"
    assert argv.count("plm_ssh_agent") == 1 and "ssh -F" not in " ".join(argv)  # the agent replaces ssh
    assert as_json["files"] == {}  # so no ssh_config is written
    assert as_json["rank_hosts"] == ["emu0", "emu0", "emu1", "emu1"]
    assert netns.tag_leftovers(tag) == []  # a dry run creates nothing


def test_config_section_and_its_errors(tmp_path):
    shipped = load_config(ROOT / "configs" / "emulated.yaml")
    assert shipped.hosts == () and shipped.emulate == EmulateSpec(
        num_nodes=4, ranks_per_node=2, bandwidth_bps=10**9, slow_nodes=((3, 200 * 10**6),))
    (tmp_path / "m.py").write_text(MACHINES)
    done = invoke("run", "--config", str(ROOT / "configs" / "emulated.yaml"), "--dry-run", "m.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "-np 8 \\" in done.stdout and "--host emu0:2,emu1:2,emu2:2,emu3:2 \\" in done.stdout
    both = tmp_path / "both.yaml"
    both.write_text("hosts:\n  - name: a\nemulate: nodes=2\n")
    done = invoke("run", "--config", str(both), "--dry-run", "m.py", cwd=tmp_path)
    assert (done.returncode, done.stderr.strip()) == (2, f"asyncddp: error: {both}:1: hosts: emulate makes its own "
                                                         "hosts; keep hosts or emulate, not both")
    bad = tmp_path / "bad.yaml"
    bad.write_text("np: 2\nemulate:\n  nodes: 2\n  bandwidth: fast\n")
    done = invoke("run", "--config", str(bad), "--dry-run", "m.py", cwd=tmp_path)
    assert done.stderr.strip() == (f"asyncddp: error: {bad}:2: emulate: bandwidth='fast' is not a rate; write a "
                                   "number and one of bit/kbit/mbit/gbit/tbit, e.g. bandwidth=1gbit")
    done = invoke("run", "--emulate", "nodes=2,ranks_per_node=2", "-np", "5", "--dry-run", "m.py", cwd=tmp_path)
    assert done.stderr.strip() == ("asyncddp: error: -np 5 is more than the 4 slots of --emulate nodes=2,ranks_per_node=2; "
                                   "lower -np, add slots, or pass --oversubscribe")
    done = invoke("run", "--emulate", "nodes=2", "-H", "a:2", "m.py", cwd=tmp_path)
    assert done.stderr.strip() == "asyncddp: error: --emulate makes its own hosts (emu0, emu1, ...); drop --hostfile/-H"


def test_without_root_one_line():
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run a command as another user")
    # pytest's tmp_path is private to root; the other user needs a directory it can enter.
    workdir = Path(tempfile.mkdtemp(prefix="asyncddp-emulate-"))
    try:
        workdir.chmod(0o755)
        (workdir / "m.py").write_text(MACHINES)
        done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                               *asyncddp_argv("run", "--emulate", "nodes=2", "m.py")], cwd=workdir,
                              capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        shutil.rmtree(workdir)
    assert (done.returncode, done.stderr.strip()) == (2, "asyncddp: error: --emulate cannot build its namespaces: "
                                                         "network namespaces need root: rerun as root (sudo) or in a "
                                                         "container with CAP_SYS_ADMIN")


def test_run_on_two_nodes(root_only, tmp_path):
    (tmp_path / "m.py").write_text(MACHINES)
    done = asyncddp("run", "--emulate", "nodes=2,ranks_per_node=2,bandwidth=1gbit", "m.py", cwd=tmp_path, timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = sorted(line.split()[2:] for line in done.stdout.splitlines() if line.split()[1:2] == ["RANK"])
    assert lines == [["0", "0", "emu0"], ["1", "0", "emu0"], ["2", "1", "emu1"], ["3", "1", "emu1"]]
    _assert_clean(done.pid, str(tmp_path))


def test_timeout_and_ctrl_c_remove_everything(root_only, tmp_path):
    (tmp_path / "slow.py").write_text(SLEEPER)
    done = asyncddp("run", "--emulate", "nodes=2", "--timeout", "4", "slow.py", cwd=tmp_path, timeout=90)
    assert done.returncode == 124, done.stdout[-2000:] + done.stderr[-2000:]
    assert "job timed out after 4 s" in done.stderr
    _assert_clean(done.pid, str(tmp_path))
    # SIGINT as from a terminal: a suite started in the background would pass on an ignored one.
    job = subprocess.Popen(asyncddp_argv("run", "--emulate", "nodes=2", "slow.py"), cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = [job.stdout.readline(), job.stdout.readline()]
        assert sorted(seen) == ["[0] UP\n", "[1] UP\n"], seen
        # The run's namespaces carry its pid, which is what _assert_clean looks for afterwards.
        assert len([name for name in netns.list_namespaces() if name.startswith(f"{PREFIX}-{job.pid}-")]) == 3
        job.send_signal(signal.SIGINT)
        assert job.wait(30) == 130
        assert "interrupted (Ctrl-C)" in job.stderr.read()
    finally:
        if job.poll() is None:
            job.kill()
    _assert_clean(job.pid, str(tmp_path))
