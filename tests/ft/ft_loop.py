"""Rank side of the low-level test: a loop of allreduce and neighbor_allreduce that loses ranks.

Arguments: work folder, number of steps, the steps of the kill points (comma-separated), and
``blocking``, ``nonblocking`` or ``mixed`` (alternating per step); optionally ``R@V``: launch
rank R, in the recovery that follows world version V, writes ``rebuild.R`` half-way through
rebuilding the world and waits there for the harness to kill it (a loss during recovery). Values are exact functions
of the step and the rank in the current world, so every step after a loss checks that the
world was rebuilt (size, ranks, Exp-2 topology of the new size).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import asyncddp as addp  # noqa: E402
from asyncddp.comm.context import get_context  # noqa: E402
from tests.ft.killer import announce, report, wait_for_go  # noqa: E402

workdir, num_steps = Path(sys.argv[1]), int(sys.argv[2])
kill_steps = [int(s) for s in sys.argv[3].split(",")]
mode = sys.argv[4]
addp.init()
me = addp.rank()  # launch rank
if len(sys.argv) > 5:
    from asyncddp.comm import world_rebuild

    stall_rank, stall_version = (int(v) for v in sys.argv[5].split("@"))
    update_context = world_rebuild.update_context

    def stalling_update(*args, **kwargs):
        if me == stall_rank and addp.world_version() == stall_version:
            (workdir / f"rebuild.{me}").write_text("1")
            time.sleep(60)  # killed by the harness meanwhile
        return update_context(*args, **kwargs)

    world_rebuild.update_context = stalling_update
announce(workdir, me)


def next_comm_index() -> int:
    """The slot Open MPI gives the next communicator (freed slots are reused, lowest first)."""
    probe = get_context().comm.Dup()
    index = probe.py2f()
    probe.Free()
    return index


addp.barrier()  # the engine and its communicators exist
comm_slots = [next_comm_index()]
old_comms = [get_context().local_comm, get_context().cross_comm]
errors, bad, changes = [], [], []
addp.on_world_change(lambda change: changes.append(change.to_dict()))
step, killed_at, stalls = 0, None, []
while step < num_steps:
    if kill_steps and step == kill_steps[0]:
        killed_at = wait_for_go(workdir, me, len(stalls))
        kill_steps.pop(0)
    r, n = addp.rank(), addp.size()
    nonblocking = mode == "nonblocking" or (mode == "mixed" and step % 2 == 1)
    x = torch.full((3,), float((r + 1) * (step + 1)), dtype=torch.float64)
    try:
        if nonblocking:
            handles = [addp.allreduce_nonblocking(x), addp.neighbor_allreduce_nonblocking(x),
                       addp.allreduce_nonblocking(x, op="max")]
            total, mixed, top = [addp.synchronize(h) for h in handles]
        else:
            total = addp.allreduce(x)
            mixed = addp.neighbor_allreduce(x)
            top = addp.allreduce(x, op="max")
    except addp.RankLostError as error:
        errors.append({"lost": list(error.lost_ranks), "version": error.world_version, "step": step})
        comm_slots.append(next_comm_index())
        step = addp.agree_on_step(step)
        continue
    ins = addp.in_neighbor_ranks()
    expect_mixed = (step + 1) * ((r + 1) + sum(j + 1 for j in ins)) / (len(ins) + 1)
    expect_total = (step + 1) * (n + 1) / 2
    if not (torch.all(total == expect_total) and torch.all(mixed == expect_mixed)
            and torch.all(top == n * (step + 1))):
        bad.append([step, n, total.tolist(), mixed.tolist(), top.tolist(), expect_total, expect_mixed])
    if killed_at is not None:
        stalls.append(time.time() - killed_at)
        killed_at = None
    step += 1
graph = addp.load_topology()
same_family = sorted(graph.edges) == sorted(addp.exponential_two_graph(addp.size()).edges)
from mpi4py import MPI  # noqa: E402

report(workdir, me, {"errors": errors, "bad": bad, "size": addp.size(), "rank": addp.rank(),
                     "comm_slots": comm_slots, "old_freed": [comm == MPI.COMM_NULL for comm in old_comms],
                     "version": addp.world_version(), "changes": changes, "exp2": same_family,
                     "stalls": stalls})
