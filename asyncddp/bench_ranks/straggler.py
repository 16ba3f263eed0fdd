"""The per-rank body of ``asyncddp bench straggler``: one slow rank, synchronous vs asynchronous.

Workload ``straggler`` of ``asyncddp.bench_ranks``. Rank
``slow_rank`` sleeps (slow_factor − 1) × its own compute time after every step, emulating a
machine ``slow_factor`` times slower. Two phases from the same initial weights (each rank on its
own random batch): static Exp-2 neighbour averaging (``DistributedNeighborAllreduceOptimizer``:
every step waits for the neighbours, so the fast ranks wait for the slow one) and asynchronous
``DistributedWinPutOptimizer`` (nobody waits). Each rank takes ``iters`` timed steps; a rank's
throughput is its own batch / mean step time. The consensus error is measured after every rank
has finished the phase.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import asyncddp.comm as addp
from asyncddp.bench_ranks.models import NUM_CLASSES, build_model
from asyncddp.bench.results import BenchError, StragglerOptions, StragglerResult



def _consensus_error(model) -> float:
    """max_i ‖x_i − x̄‖ / ‖x̄‖ over the flattened parameters."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    mean = addp.allreduce(flat, average=True)
    mine = (torch.linalg.vector_norm(flat - mean) / torch.linalg.vector_norm(mean)).item()
    return max(addp.get_context().comm.allgather(mine))


def _phase(options: StragglerOptions, wrapper, images, labels) -> tuple[float, float]:
    """(this rank's img/s, consensus error) for one optimizer wrapper."""
    torch.manual_seed(0)
    model = build_model(options.model, options.image_size)
    optimizer = wrapper(torch.optim.SGD(model.parameters(), lr=1e-2), model)
    slow = addp.rank() == options.slow_rank
    comm = addp.get_context().comm
    comm.Barrier()
    elapsed = 0.0
    for index in range(options.warmup + options.iters):
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        compute = time.perf_counter() - start
        if slow:
            time.sleep((options.slow_factor - 1.0) * compute)
        optimizer.step()
        if index >= options.warmup:
            elapsed += time.perf_counter() - start
    comm.Barrier()
    if hasattr(optimizer, "free"):
        optimizer.free()
    return options.iters * options.batch_size / elapsed, _consensus_error(model)


def run(options: StragglerOptions) -> StragglerResult | None:
    import asyncddp.optim as optim

    n = addp.size()
    if n < 2 or not 0 <= options.slow_rank < n:
        raise BenchError(f"--slow-rank {options.slow_rank} with -np {n}: need 2+ ranks and 0 <= slow rank < np")
    g = torch.Generator().manual_seed(1 + addp.rank())
    images = torch.randn(options.batch_size, 3, options.image_size, options.image_size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (options.batch_size,), generator=g)
    sync_rate, sync_error = _phase(options, optim.DistributedNeighborAllreduceOptimizer, images, labels)
    async_rate, async_error = _phase(options, optim.DistributedWinPutOptimizer, images, labels)
    rates = addp.get_context().comm.gather((sync_rate, async_rate), root=0)
    if addp.rank() != 0:
        return None
    fast = [r for rank, r in enumerate(rates) if rank != options.slow_rank]
    return StragglerResult(options=options,
                           sync_fast_img_s=sum(s for s, _ in fast) / len(fast),
                           async_fast_img_s=sum(a for _, a in fast) / len(fast),
                           sync_slow_img_s=rates[options.slow_rank][0], async_slow_img_s=rates[options.slow_rank][1],
                           sync_consensus_error=sync_error, async_consensus_error=async_error)


def run_rank(payload: dict) -> dict | None:
    """Both phases for ``StragglerOptions`` as a dict; rank 0 returns the result as a dict."""
    result = run(StragglerOptions(**payload))
    return result.to_dict() if result is not None else None
