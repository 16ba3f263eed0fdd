"""Rank side of the low-level test: a loop of allreduce and neighbor_allreduce that loses ranks.

Values are exact functions of the step and the rank in the current world, so every step after
the loss checks that the world was rebuilt (size, ranks, Exp-2 topology of the new size).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import asyncddp as addp  # noqa: E402
from tests.ft.killer import announce, report, wait_for_go  # noqa: E402

workdir, num_steps, kill_step = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
nonblocking = len(sys.argv) > 4 and sys.argv[4] == "nonblocking"
addp.init()
me = addp.rank()
announce(workdir, me)
errors, bad, changes = [], [], []
addp.on_world_change(lambda change: changes.append(change.to_dict()))
step, killed_at, first_after = 0, None, None
while step < num_steps:
    if step == kill_step and killed_at is None:
        killed_at = wait_for_go(workdir, me)
    r, n = addp.rank(), addp.size()
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
        step = addp.agree_on_step(step)
        continue
    ins = addp.in_neighbor_ranks()
    expect_mixed = (step + 1) * ((r + 1) + sum(j + 1 for j in ins)) / (len(ins) + 1)
    expect_total = (step + 1) * (n + 1) / 2
    if not (torch.all(total == expect_total) and torch.all(mixed == expect_mixed)
            and torch.all(top == n * (step + 1))):
        bad.append([step, n, total.tolist(), mixed.tolist(), top.tolist(), expect_total, expect_mixed])
    if errors and first_after is None:
        first_after = time.time()
    step += 1
graph = addp.load_topology()
same_family = sorted(graph.edges) == sorted(addp.exponential_two_graph(addp.size()).edges)
report(workdir, me, {"errors": errors, "bad": bad, "size": addp.size(), "rank": addp.rank(),
                     "version": addp.world_version(), "changes": changes, "exp2": same_family,
                     "stall": None if first_after is None else first_after - killed_at})
