"""Per-rank: BlueFog's timeline file, through the alias. ``BLUEFOG_TIMELINE`` is set (with
``bluefog.common.util.env``, as BlueFog's docs do) only around ``bf.init()``, which is where
BlueFog reads it; each rank then reads back its own ``PREFIX{rank}.json`` while the job runs.
The caller (tests/test_compat.py) gives the prefix and checks the closed files afterwards."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

import asyncddp.compat

asyncddp.compat.install_bluefog_alias()
import bluefog.torch as bf  # noqa: E402
from bluefog.common.util import env  # noqa: E402

pytestmark = pytest.mark.timeout(90)
PREFIX = os.environ["ASYNCDDP_TEST_BF_TIMELINE"]


def _events() -> list[dict]:
    with open(f"{PREFIX}{bf.rank()}.json") as file:
        text = file.read()
    assert text.startswith("[\n") and not text.endswith("]\n")  # still open while the job runs
    return json.loads(text + "\n]")


def _activity_on_two_threads():
    def work():
        assert bf.timeline_start_activity("py", "THREAD")
        assert not bf.timeline_start_activity("py", "AGAIN")  # one open activity per row and thread
        barrier.wait()  # both threads have theirs open at once
        assert bf.timeline_end_activity("py")

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_ops_and_activities_are_in_this_ranks_file_as_they_happen():
    with env(BLUEFOG_TIMELINE=PREFIX):
        bf.init()
    assert "BLUEFOG_TIMELINE" not in os.environ
    bf.neighbor_allreduce(torch.ones(3), name="nar")
    bf.synchronize(bf.allreduce_nonblocking(torch.ones(2), name="ar"))
    bf.win_create(torch.zeros(2), "win")
    bf.win_accumulate(torch.ones(2), "win")
    bf.win_wait(bf.win_put_nonblocking(torch.ones(2), "win"))
    _activity_on_two_threads()
    bf.barrier()
    bf.win_free()

    events = _events()
    rows = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(rows.values()) == ["ar", "barrier", "nar", "py", "win"]
    begun = [(rows[e["pid"]], e["name"], e["tid"]) for e in events if e["ph"] == "B"]
    assert sorted({(row, name) for row, name, _ in begun}) == [
        ("ar", "ENQUEUE_ALLREDUCE"), ("ar", "MPI_ALLREDUCE"), ("barrier", "MPI_BARRIER"),
        ("nar", "ENQUEUE_NEIGHBOR_ALLREDUCE"), ("nar", "MPI_NEIGHBOR_ALLREDUCE"), ("py", "THREAD"),
        ("win", "ENQUEUE_WIN_ACCUMULATE"), ("win", "ENQUEUE_WIN_PUT"), ("win", "MPI_WIN_ACCUMULATE"),
        ("win", "MPI_WIN_PUT"),
    ]  # fmt: skip
    assert len(begun) == 11  # each op once, and THREAD once per thread
    # Threads are numbered 1, 2, ... by first appearance; each thread of ours is its own.
    enqueuing = {tid for _, name, tid in begun if name.startswith("ENQUEUE_")}
    python = {tid for row, _, tid in begun if row == "py"}
    assert len(enqueuing) == 1 and len(python) == 2 and not enqueuing & python
    assert {e["tid"] for e in events} == set(range(1, len({e["tid"] for e in events}) + 1))
    # Every begin has its end, on the same row and thread, no earlier.
    for pid, tid in {(e["pid"], e["tid"]) for e in events if e["ph"] in "BE"}:
        phases = [(e["ph"], e["ts"]) for e in events if (e["pid"], e["tid"]) == (pid, tid) and e["ph"] in "BE"]
        assert [p for p, _ in phases] == ["B", "E"] * (len(phases) // 2), (rows[pid], phases)
        assert all(b[1] <= e[1] for b, e in zip(phases[::2], phases[1::2])), phases
