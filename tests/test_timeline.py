"""The timeline recorder and its merged Chrome-trace file (pure: a stand-in communicator)."""

import json
import os
import subprocess
import sys

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


def _spans(path):
    return [(e["pid"], e["name"]) for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]


def test_without_shutdown_each_rank_writes_its_own_events_at_exit(tmp_path, monkeypatch):
    from asyncddp.comm.timeline import PARTS_ENV, merge_parts

    monkeypatch.delenv(PARTS_ENV, raising=False)
    alone = Timeline(tmp_path / "one.json", rank=0, size=1)
    alone.record("a", "allreduce", 1.0, 2.0, 8)
    assert alone.write_at_exit() == tmp_path / "one.json" and _spans(tmp_path / "one.json") == [(0, "a")]
    assert alone.write_at_exit() is None  # once only
    member = Timeline(tmp_path / "job.json", rank=2, size=4)
    member.record("b", "barrier", 1.0, 2.0, 0)
    assert member.write_at_exit() == tmp_path / "job.json.rank2.json"
    assert not (tmp_path / "job.json").exists()
    # Under asyncddp run: the parts go to the launcher's folder, which merges what it finds.
    monkeypatch.setenv(PARTS_ENV, str(tmp_path / "parts"))
    for rank in (3, 0):
        recorder = Timeline(tmp_path / "merged.json", rank=rank, size=4)
        recorder.record(f"op{rank}", "allreduce", 1.0, 2.0, 8)
        recorder.write_at_exit()
    (tmp_path / "parts" / "rank1.json").write_text('{"rank": 1, "ev')  # a rank killed while writing
    assert merge_parts(tmp_path / "parts", tmp_path / "merged.json") == (tmp_path / "merged.json", [0, 3])
    assert _spans(tmp_path / "merged.json") == [(0, "op0"), (3, "op3")]


def test_shutdown_writes_the_merged_file_and_disarms_the_exit_write(tmp_path):
    recorder = Timeline(tmp_path / "t.json", rank=0, size=1)
    recorder.record("a", "allreduce", 1.0, 2.0, 8)
    recorder.write_merged(_Gather([]))
    (tmp_path / "t.json").unlink()
    assert recorder.write_at_exit() is None and not (tmp_path / "t.json").exists()


def test_the_launcher_says_what_happened_to_the_timeline(tmp_path):
    from asyncddp.launcher.prepare import finish_timeline

    path, parts = tmp_path / "t.json", tmp_path / "parts"
    env = {"ASYNCDDP_TIMELINE": str(path), "ASYNCDDP_TIMELINE_PARTS": str(parts)}
    assert finish_timeline(env) == (f"asyncddp: --timeline {path}: no rank recorded a timeline (the script ran no "
                                    "asyncddp operation after asyncddp.init())")
    parts.mkdir()
    for rank in (0, 1, 2, 5):
        (parts / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "events": []}))
    assert finish_timeline(env) == (f"asyncddp: timeline of ranks 0-2, 5 written to {path} (the script did not call "
                                    "asyncddp.shutdown())")
    assert finish_timeline({"ASYNCDDP_TIMELINE": str(path)}) is None  # remote ranks: nothing to merge here


SCRIPT = """
import os, sys, time, torch, asyncddp
asyncddp.init()
asyncddp.allreduce(torch.ones(4), name="grad")
if asyncddp.rank() == 1:  # raise once rank 0 has ended normally and left its events
    part = os.path.join(os.environ["ASYNCDDP_TIMELINE_PARTS"], "rank0.json")
    while not os.path.exists(part):
        time.sleep(0.05)
    raise RuntimeError("boom")
"""


def test_a_job_without_shutdown_still_leaves_every_ranks_timeline(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, "-m", "asyncddp", "run", "-np", "2", "--timeline", "tl.json", "train.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert (f"asyncddp: timeline of ranks 0-1 written to {tmp_path / 'tl.json'} (the script did not call "
            "asyncddp.shutdown())") in done.stderr.splitlines()
    assert sorted(_spans(tmp_path / "tl.json")) == [(0, "grad"), (1, "grad")]


def test_one_process_without_shutdown_writes_the_file_at_exit(tmp_path):
    script = "import torch, asyncddp\nasyncddp.init()\nasyncddp.allreduce(torch.ones(2), name='g')\n"
    env = {**os.environ, "ASYNCDDP_TIMELINE": str(tmp_path / "t.json")}
    env.pop("ASYNCDDP_TIMELINE_PARTS", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _spans(tmp_path / "t.json") == [(0, "g")]
