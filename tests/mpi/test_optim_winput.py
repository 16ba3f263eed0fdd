"""Per-rank check of the asynchronous win-put optimizer with one rank 3x slower (mpirun, 3-4 ranks).

No collective runs inside the training loop: each rank steps for the same wall time at its own
pace, and only afterwards do the ranks compare step counts (allgather) and free the windows.
With ``max_lag`` set, the slow rank holds its out-neighbours to at most that many rounds ahead.
"""

import itertools
import time
import warnings

import pytest
import torch

import asyncddp as addp
import asyncddp.optim.winput as winput

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
    opt = addp.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model,
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


def test_parameters_are_views_and_puts_land_in_the_neighbours_buffers():
    # Rank r's parameters all hold r + 1. lr=0: the step changes nothing locally, so after one
    # step and a barrier, every in-neighbour's buffer here holds exactly what it put: its r + 1.
    r = addp.rank()
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(r + 1.0)
    opt = addp.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model,
                                          window_prefix="views")  # fmt: skip
    name, flat, _ = opt._addp_windows[0]
    assert flat is addp.win_memory(name)  # the parameters live in the published block
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in model.parameters())
    torch.nn.functional.mse_loss(model(torch.ones(1, 3)), torch.zeros(1, 1)).backward()
    opt.step()
    addp.barrier()
    ins = addp.in_neighbor_ranks()
    for j in ins:
        got = addp.win_update(name, self_weight=0.0, neighbor_weights={j: 1.0}, clone=True)
        assert torch.equal(got, torch.full_like(flat, j + 1.0)), (j, got)
    # Own update: uniform over self and in-neighbours, each buffer either still the copy of our
    # value made at win_create or the neighbour's put.
    value = model[0].weight[0, 0].item()
    possible = {(r + 1 + sum(j + 1 if bit else r + 1 for j, bit in zip(ins, bits))) / (len(ins) + 1)
                for bits in itertools.product([0, 1], repeat=len(ins))}
    assert any(abs(value - v) < 1e-6 for v in possible), (value, possible)
    assert all(torch.all(p == value) for p in model.parameters())
    addp.barrier()
    opt.free()
    # free() moved the parameters off the window's memory: they keep their values and train on.
    assert all(torch.all(p == value) for p in model.parameters())
    assert model(torch.ones(1, 3)).shape == (1, 1)


def _one_weight_model(value: float):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _step(model, opt):
    opt.zero_grad()
    model(torch.ones(1, 1)).sum().backward()
    opt.step()


@pytest.mark.parametrize("max_lag", [0, 1])
def test_max_lag_keeps_every_rank_within_max_lag_rounds_of_its_in_neighbours(max_lag):
    r = addp.rank()
    model = _one_weight_model(r + 1.0)
    opt = addp.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model,
                                          window_prefix=f"lag{max_lag}")  # fmt: skip
    opt.max_lag = max_lag
    (name,) = opt.window_names
    addp.barrier()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no wait may run out
        for _ in range(12):
            if r == 0:
                time.sleep(3 * STEP_SLEEP)
            _step(model, opt)
            # Counts only grow, so what held when this round's averaging began holds now.
            counts = addp.win_put_counts(name)
            mine = counts.pop(r)
            assert mine == opt.num_steps
            assert all(count >= mine - max_lag for count in counts.values()), (mine, counts)
    addp.barrier()
    opt.free()


def test_max_lag_waits_at_most_lag_wait_s_then_warns_once(monkeypatch):
    monkeypatch.setattr(winput, "LAG_WAIT_S", 0.3)
    r = addp.rank()
    model = _one_weight_model(1.0)
    opt = addp.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model,
                                          window_prefix="lagwait")  # fmt: skip
    opt.max_lag = 1
    addp.barrier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Rank 0 stops after one round: its out-neighbours' third and fourth rounds each wait
        # 0.3 s for its second put, which never comes, then average anyway.
        for _ in range(1 if r == 0 else 4):
            _step(model, opt)
    lag = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if 0 in addp.in_neighbor_ranks():
        assert len(lag) == 1, lag
        assert lag[0].startswith("DistributedWinPutOptimizer: in-neighbours [0"), lag
        assert "did not make their put of this round within 0.3 s (max_lag=1)" in lag[0], lag
    elif r == 0:
        assert lag == []
    addp.barrier()
    opt.free()
