"""Rank side of the optimizer tests: train a small model with each optimizer named on the
command line, losing ranks mid-run, and report what each survivor saw.

Arguments: work folder, then ``KIND:STEP`` per phase (one kill point per phase, at that step);
kinds: ``nar`` (static Exp-2), ``sched`` (one-peer Exp-2 schedule), ``grad``, ``dear``,
``winput``, ``choco`` (CHOCO-SGD, int8, one-peer Exp-2), ``diloco`` (DiLoCo over allreduce, an
outer step every 2 steps, so a loss at an odd step lands in an outer step). The script itself never catches ``RankLostError``: the optimizers must.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import asyncddp as addp  # noqa: E402
from tests.ft.killer import announce, report, wait_for_go  # noqa: E402

NUM_STEPS = 12
workdir = Path(sys.argv[1])
phases = [(kind, int(step)) for kind, step in (arg.split(":") for arg in sys.argv[2:])]
addp.init()
me = addp.rank()  # launch rank
announce(workdir, me)
torch.manual_seed(0)
true_w = torch.randn(8, 1)
gen = torch.Generator().manual_seed(100 + me)  # this rank's data shard
data_x = torch.randn(64, 8, generator=gen)
data_y = data_x @ true_w + 0.01 * torch.randn(64, 1, generator=gen)


def build(kind, model, opt):
    if kind == "nar":
        return addp.DistributedNeighborAllreduceOptimizer(opt, model)
    if kind == "sched":
        return addp.DistributedNeighborAllreduceOptimizer(opt, model, schedule=addp.one_peer_exponential_two)
    if kind == "grad":
        return addp.DistributedGradientAllreduceOptimizer(opt, model)
    if kind == "dear":
        return addp.DistributedDeAROptimizer(opt, model)
    if kind == "choco":
        return addp.DistributedCompressedNeighborOptimizer(opt, model, "int8", schedule=addp.one_peer_exponential_two)
    if kind == "diloco":
        return addp.DistributedLocalSGDOptimizer(opt, model, sync_every=2, outer_lr=0.7, outer_momentum=0.9,
                                                 nesterov=True, communication="allreduce")
    return addp.DistributedWinPutOptimizer(opt, model)


results = {}
for point, (kind, kill_step) in enumerate(phases):
    torch.manual_seed(1)  # the same start on every rank
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 1))
    opt = build(kind, model, torch.optim.SGD(model.parameters(), lr=0.05))
    losses, step_times, stall = [], [], None
    for step in range(NUM_STEPS):
        if step == kill_step:
            killed_at = wait_for_go(workdir, me, point)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(data_x), data_y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == kill_step:
            stall = time.time() - killed_at
        if kind == "winput" and step >= kill_step:
            time.sleep(0.05)  # a step of real length: time for the news of the loss to arrive
    version_in_steps = addp.world_version()
    if kind == "dear":
        opt.flush()
    if kind == "winput":
        opt.free()
    raw = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    averaged = addp.allreduce(raw)
    spread = (addp.allreduce(raw, op="max") - addp.allreduce(raw, op="min")).abs().max().item()
    results[kind] = {"losses": losses, "stall": stall, "size": addp.size(), "averaged": averaged.tolist(),
                     "spread": spread, "steps": len(losses), "version": addp.world_version(),
                     "version_in_steps": version_in_steps}
report(workdir, me, results)
