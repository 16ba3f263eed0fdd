"""Per-rank check of the asynchronous win-put optimizer with one rank 3x slower (mpirun, 3-4 ranks).

No collective runs inside the training loop: each rank steps for the same wall time at its own
pace, and only afterwards do the ranks compare step counts (allgather) and free the windows.
"""

import time

import torch

import asyncddp as addp

torch.set_num_threads(1)
WALL_SECONDS = 3.0
STEP_SLEEP = 0.008  # seconds per step on normal ranks; rank 0 sleeps 3x as long


def test_slow_rank_does_not_hold_back_the_others():
    g = torch.Generator().manual_seed(42)
    w_star = torch.randn(8, 1, generator=g)
    g.manual_seed(1000 + addp.rank())
    x = torch.randn(16 + 8 * addp.rank(), 8, generator=g)  # different batch sizes per rank
    y = x @ w_star
    torch.manual_seed(3 + addp.rank())
    model = torch.nn.Linear(8, 1, bias=False)
    opt = addp.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model,
                                          window_prefix="slowtest")  # fmt: skip
    assert isinstance(opt, torch.optim.SGD)
    slow = addp.rank() == 0
    addp.barrier()
    start = time.monotonic()
    while time.monotonic() - start < WALL_SECONDS:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        time.sleep(STEP_SLEEP * (3 if slow else 1))
        opt.step()
    counts = addp.allgather(torch.tensor([opt.num_steps])).tolist()
    error = (model.weight.detach().reshape(-1) - w_star.reshape(-1)).abs().max().item()
    errors = addp.allgather(torch.tensor([error], dtype=torch.float64)).tolist()
    opt.free()
    print(f"rank {addp.rank()}: steps per rank {counts}, max |w - w*| per rank {errors}")
    assert min(counts[1:]) > 2 * counts[0], counts  # the others ran far ahead
    assert max(errors) < 1e-3, errors  # and everyone, the slow rank included, converged
