"""Neighbour averaging, collectives, handles, fusion and the timeline under real mpirun."""

import json
import subprocess
import sys

import pytest

from tests.mpi_helpers import ROOT, run_mpi_pytest

OPS = "tests/mpi/test_ops.py"
SCHEDULES = "tests/mpi/test_ops_schedules.py"


@pytest.mark.parametrize("num_ranks", [1, 3, 4])
def test_ops_under_mpirun(num_ranks):
    run_mpi_pytest(num_ranks, OPS, extra_args=(SCHEDULES,))


def test_ops_at_two_ranks_with_timeline(tmp_path):
    trace_path = tmp_path / "trace.json"
    run_mpi_pytest(2, OPS, extra_args=(SCHEDULES,), env={"ASYNCDDP_TIMELINE": str(trace_path)})
    trace = json.loads(trace_path.read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in events} == {0, 1}
    names = {e["name"] for e in events}
    assert {"neighbor_allreduce", "allreduce", "broadcast", "allgather", "barrier", "second"} <= names
    named = [e for e in events if e["name"] == "second"]
    assert len(named) == 2 and all(e["args"]["bytes"] == 4000 for e in named)
    assert all(e["args"]["peers"] == [1 - e["pid"]] for e in named)
    assert all(e["dur"] >= 0 and e["ts"] > 0 for e in events)
    meta = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert meta == {0: "rank 0", 1: "rank 1"}


def test_hierarchical_with_fake_machines_of_two():
    run_mpi_pytest(4, "tests/mpi/test_ops_hierarchical.py", env={"ASYNCDDP_RANKS_PER_MACHINE": "2"})


def _python(code, env=None):
    import os

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=full_env
    )


def test_ops_before_init_and_bad_fusion_threshold():
    code = (
        "import torch, asyncddp as addp\n"
        "for op in (lambda: addp.neighbor_allreduce(torch.ones(1)), lambda: addp.allreduce(torch.ones(1)),"
        " lambda: addp.barrier()):\n"
        "    try:\n        op()\n    except addp.NotInitializedError as e:\n        print('ok:', e)\n"
        "addp.init()\n"
        "try:\n    addp.allreduce(torch.ones(1))\nexcept addp.ConfigError as e:\n    print('config:', e)\n"
    )
    done = _python(code, {"ASYNCDDP_FUSION_THRESHOLD": "lots"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ok: asyncddp is not initialised") == 3
    assert "config: ASYNCDDP_FUSION_THRESHOLD='lots' is not a byte count" in done.stdout


def test_no_submodule_shadows_an_exported_name():
    # Importing a submodule sets it as an attribute of its package: a module named like one of
    # the package's lazy exports (say comm/neighbor_allgather.py) would replace that function.
    code = (
        "import importlib, pkgutil, types, asyncddp, asyncddp.comm, asyncddp.optim, asyncddp.topology\n"
        "for package in (asyncddp.comm, asyncddp.optim, asyncddp.topology):\n"
        "    for info in pkgutil.iter_modules(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = [f'{package.__name__}.{name}' for package in (asyncddp, asyncddp.comm)\n"
        "       for name in package.__all__ if isinstance(getattr(package, name), types.ModuleType)]\n"
        "print('shadowed:', bad)\n"
    )
    done = _python(code, {})
    assert done.returncode == 0, done.stderr
    assert "shadowed: []" in done.stdout, done.stdout


def test_one_export_table_serves_both_packages_and_every_module():
    code = (
        "import importlib, asyncddp, asyncddp.comm\n"
        "missing = [n for n, m in asyncddp.EXPORTS.items() if getattr(importlib.import_module(m), n, None) is None]\n"
        "rows = {m for m in asyncddp.EXPORTS.values() if m.startswith('asyncddp.comm.')}\n"
        "not_in_all = [m for m in rows if not set(asyncddp.exported_by(m)) <= set(importlib.import_module(m).__all__)]\n"
        "comm = sorted(n for n, m in asyncddp.EXPORTS.items() if m in rows)\n"
        "same = all(getattr(asyncddp.comm, n) is getattr(asyncddp, n) for n in comm)\n"
        "print(missing, not_in_all, sorted(set(asyncddp.comm.__all__) - set(comm)), same)\n"
        "print(asyncddp.neighbor_allreduce_nonblocking_.__doc__.splitlines()[0])\n"
    )
    done = _python(code, {})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[] [] ['get_context'] True", done.stdout
    assert lines[1].startswith("In-place ``neighbor_allreduce_nonblocking``")


def test_spec_tag_is_the_same_for_every_spelling_of_a_shape():
    import numpy as np
    import torch

    from asyncddp.comm.p2p import spec_tag

    first = spec_tag(torch.Size([2, 3]), torch.float32)  # cached first as a Size: must not change the text
    assert first == spec_tag((2, 3), torch.float32) == spec_tag([np.int64(2), 3], torch.float32)
    assert first != spec_tag((3, 2), torch.float32) and first != spec_tag((2, 3), torch.float64)


def test_mismatched_shapes_raise_on_every_rank_at_three():
    run_mpi_pytest(3, "tests/mpi/test_ops_mismatch.py")


def test_mismatched_shapes_raise_on_every_rank_at_four_as_two_machines():
    run_mpi_pytest(4, "tests/mpi/test_ops_mismatch.py", env={"ASYNCDDP_RANKS_PER_MACHINE": "2"})
