"""The per-rank body of ``asyncddp bench MODEL --kill-rank R``: one method's run that loses rank R.

Workload ``fault`` of ``asyncddp.bench_ranks``, in a fault-tolerant job. Every rank builds the
model and synthetic batch as workload ``training`` does, wraps the optimizer for the method and
times every step; rank R SIGKILLs itself instead of running step S. The script catches nothing:
the optimizers recover inside ``step()``, as they would for a user's script. Each survivor notes
the step in which it recovered (``world_version()`` moved), and once every survivor has, the new
world's rank 0 gathers their timings and the spread of their parameters.

``torch._dynamo`` (which the first torch optimizer would import: 2 s, 6 s on loaded cores) and
``asyncddp.optim`` are imported with this module, before ``addp.init()`` starts MPI, so that the
bench also runs with ULFM's heartbeat detector turned on (``--mpi-args``): it hears a rank only
while the rank is inside MPI, and declares one that stays out longer than its timeout dead.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import torch
import torch._dynamo  # noqa: F401  (see the module docstring)
import torch.nn.functional as F

import asyncddp.comm as addp
import asyncddp.optim  # noqa: F401  (see the module docstring)
from asyncddp.bench.fault import GUARANTEES, FaultBenchOptions
from asyncddp.bench_ranks.models import NUM_CLASSES, build_model
from asyncddp.bench_ranks.training import rank_device, wrap_for_method
from asyncddp.comm import engine
from asyncddp.errors import RankLostError

SETTLE_POLL_S = 0.01


def _steps(model, optimizer, images, labels, options: FaultBenchOptions, me: int, device) -> tuple[list, list]:
    """(end time of each step, world version after it), from one start time before step 0."""
    ends, versions = [time.perf_counter()], []
    for step in range(options.warmup + options.iters):
        if step == options.kill_at_step and me == options.kill_rank:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())
        versions.append(addp.world_version())
    return ends, versions


def _settle() -> None:
    """Return once this rank has recovered from the loss. A survivor whose steps never met it
    (one-sided puts do not fail) asks until it knows; recovering is collective, so the others,
    done or still stepping, join it."""
    while addp.world_version() == 0:
        try:
            engine.check_world()
        except RankLostError:
            return
        time.sleep(SETTLE_POLL_S)


def _summary(ends: list, versions: list, options: FaultBenchOptions) -> dict:
    """This survivor's figures: mean step time before the loss and after its recovery, its stall."""
    took = [b - a for a, b in zip(ends, ends[1:])]
    recovered = next((step for step, version in enumerate(versions) if version > 0), None)
    before = took[options.warmup:options.kill_at_step]
    after = took[(recovered if recovered is not None else options.kill_at_step - 1) + 1:]
    return {"before_s": sum(before) / len(before), "after_s": sum(after) / len(after) if after else None,
            "stall_s": took[recovered] if recovered is not None else None, "recovered": recovered}


def run(options: FaultBenchOptions) -> dict | None:
    """This rank's part; the survivors' new rank 0 returns the gathered figures, the others None."""
    device, notes = rank_device(options)
    me = addp.rank()  # as launched: no rank is lost yet
    torch.manual_seed(0)  # the same initial weights on every rank, as after a broadcast
    model = build_model(options.model, options.image_size).to(device)
    g = torch.Generator().manual_seed(1 + me)
    images = torch.randn(options.batch_size, 3, options.image_size, options.image_size, generator=g).to(device)
    labels = torch.randint(0, NUM_CLASSES, (options.batch_size,), generator=g).to(device)
    optimizer = wrap_for_method(options.method, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), model,
                                options.sync_every)
    addp.barrier()
    ends, versions = _steps(model, optimizer, images, labels, options, me, device)
    _settle()
    if hasattr(optimizer, "flush"):
        optimizer.flush()
    if hasattr(optimizer, "free"):
        optimizer.free()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
    spread = (addp.allreduce(flat, op="max") - addp.allreduce(flat, op="min")).abs().max().item()
    comm = addp.get_context().comm  # the survivors' world
    gathered = comm.gather((me, _summary(ends, versions, options)), root=0)
    if comm.Get_rank() != 0:
        return None
    figures = [summary for _, summary in sorted(gathered)]
    batch, survivors = options.batch_size, len(figures)
    before = sum(f["before_s"] for f in figures) / survivors
    after = [f["after_s"] for f in figures if f["after_s"] is not None]
    stalls = [f["stall_s"] for f in figures]
    recovered = [f["recovered"] for f in figures if f["recovered"] is not None]
    if len(after) < survivors:
        notes.append("a survivor recovered in its last step: img/s after the loss counts the others")
    return {"survivors": survivors, "img_s_before": options.num_ranks * batch / before,
            "img_s_after": sum(batch / seconds for seconds in after), "iter_ms_before": 1e3 * before,
            "iter_ms_after": 1e3 * sum(after) / len(after) if after else 0.0,
            "stall_s": max((s for s in stalls if s is not None), default=None), "stall_s_per_rank": stalls,
            "recovery_step": min(recovered, default=None), "disagreement": spread,
            "guarantee": GUARANTEES[options.method][0], "notes": notes}


def run_rank(payload: dict) -> dict | None:
    """One run for ``FaultBenchOptions`` as a dict; the survivors' rank 0 returns
    ``{"run", "num_parameters", "host"}``."""
    options = FaultBenchOptions(**payload)
    figures = run(options)
    if figures is None:
        return None
    params = sum(p.numel() for p in build_model(options.model, options.image_size).parameters())
    return {"run": figures, "num_parameters": params, "host": socket.gethostname()}
