"""``asyncddp topology draw``: a bad output path or size is one line before any drawing, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ring", "-n", "4", "-o", "{tmp}/missing/ring.png"], "-o {tmp}/missing/ring.png: folder {tmp}/missing does not exist"),
        (["ring", "-n", "4", "-o", "{tmp}/ring.txt"], "-o {tmp}/ring.txt: give a .png file name"),
        (["ring", "-n", "4", "-o", "/proc/ring.png"], "-o /proc/ring.png: cannot write it"),
        (["ring", "-n", "100000", "-o", "{tmp}/ring.png"], "-n 100000: a drawing shows at most 256 ranks"),
        (["one-peer-exp2", "-n", "4", "--step", "100000000", "-o", "{tmp}/d.png"],
         "--step 100000000: give a whole number of steps from 0 to 1000"),
    ],
)
def test_draw_refuses_bad_paths_and_sizes(tmp_path, args, message):
    args = [arg.format(tmp=tmp_path) for arg in args]
    done = subprocess.run([sys.executable, "-m", "asyncddp", "topology", "draw", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"asyncddp: error: {message.format(tmp=tmp_path)}"), done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("equi-dyn", {"seed": float("nan")}, "equi_dyn_schedule: seed must be a whole number >= 0, got nan"),
        ("u-equi-static", {"seed": -1}, "equi_static_graph: seed must be a whole number >= 0, got -1"),
        ("equi-static", {"seed": 1.5}, "equi_static_graph: seed must be a whole number >= 0, got 1.5"),
        ("equi-static", {"degree": 10**9}, "equi_static_graph: degree must be a whole number from 1 to n=8"),
        ("equi-dyn", {"eta": "x"}, "equi_dyn_schedule: eta must be in (0, 1], got 'x'"),
    ],
)
def test_random_topology_parameters_are_checked(name, params, message):
    from asyncddp.errors import TopologyError
    from asyncddp.topology.reports import describe_topology

    with pytest.raises(TopologyError) as caught:
        describe_topology(name, 8, **params)
    assert str(caught.value).startswith(message), str(caught.value)
