"""The timeline recorder and its merged Chrome-trace file (pure: a stand-in communicator)."""

import json

from asyncddp.comm.timeline import Timeline, timeline_path_from_env


class _Gather:
    """Acts as rank 0 of a job whose other ranks recorded ``others``."""

    def __init__(self, others):
        self.others = others

    def gather(self, events, root=0):
        return [events, *self.others]

    def Get_rank(self):
        return 0


def test_merged_file_has_every_rank(tmp_path):
    t0 = Timeline(tmp_path / "sub" / "t.json", rank=0)
    t0.record("grad.w", "neighbor_allreduce", 10.0, 25.5, 4096, (1, 3))
    t1 = Timeline(tmp_path / "unused.json", rank=1)
    t1.record("barrier", "barrier", 12.0, 11.0, 0)
    path = t0.write_merged(_Gather([t1.events]))
    trace = json.loads(path.read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert spans[0] == {
        "name": "grad.w", "cat": "neighbor_allreduce", "ph": "X", "ts": 10.0, "dur": 15.5,
        "pid": 0, "tid": 0, "args": {"op": "neighbor_allreduce", "bytes": 4096, "peers": [1, 3]},
    }  # fmt: skip
    assert spans[1]["pid"] == 1 and spans[1]["dur"] == 0.0
    assert [e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"] == ["rank 0", "rank 1"]
    assert not (tmp_path / "unused.json").exists()


def test_path_from_env(monkeypatch):
    monkeypatch.delenv("ASYNCDDP_TIMELINE", raising=False)
    assert timeline_path_from_env() is None
    monkeypatch.setenv("ASYNCDDP_TIMELINE", "/tmp/x.json")
    assert str(timeline_path_from_env()) == "/tmp/x.json"


def test_timeline_module_imports_no_mpi():
    import subprocess
    import sys

    code = "import sys, asyncddp.comm.timeline; print('mpi4py.MPI' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False False"
