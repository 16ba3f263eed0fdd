"""Per-rank checks of BlueFog behaviours a BlueFog program leans on, through the installed alias
(``import bluefog.torch as bf``), at any job size of 3 or more ranks: numpy integers as ranks,
``neighbor_allgather`` in the caller's ``src_ranks`` order, each window's associated p,
``DistributedWinPutOptimizer.unregister_window`` and window names, and local aggregation
(k backward passes, then one ``step()``). Expected values are worked out by hand below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import asyncddp.compat

asyncddp.compat.install_bluefog_alias()
import bluefog.torch as bf  # noqa: E402
from bluefog.common import topology_util  # noqa: E402

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _bf():
    bf.init()
    yield
    bf.turn_off_win_ops_with_associated_p()
    bf.win_free()
    bf.set_topology(topology_util.ExponentialGraph(bf.size()))


# --- ranks given as numpy integers ---------------------------------------------------------------

def test_neighbor_allgather_takes_numpy_ranks_in_the_callers_order():
    n, r = bf.size(), bf.rank()
    others = np.array([j for j in range(n) if j != r])
    src = np.random.RandomState(r).permutation(others)  # numpy.int64 ranks, shuffled
    dst = np.random.RandomState(100 + r).permutation(others)
    got = bf.neighbor_allgather(torch.tensor([float(r)]), src_ranks=src, dst_ranks=dst)
    assert got.tolist() == [float(j) for j in src]
    handle = bf.neighbor_allgather_nonblocking(torch.tensor([[r, 10 * r]]), src_ranks=list(src),
                                               dst_ranks=dst)
    assert bf.synchronize(handle).tolist() == [[int(j), 10 * int(j)] for j in src]


def test_numpy_ranks_as_root_rank_and_weight_keys():
    n, r = bf.size(), bf.rank()
    assert bf.broadcast(torch.tensor([float(r)]), root_rank=np.int64(n - 1)).item() == n - 1
    x = torch.tensor([float(r)])
    bf.broadcast_(x, np.int32(1))
    assert x.item() == 1.0
    left, right = (r - 1) % n, (r + 1) % n
    out = bf.neighbor_allreduce(torch.tensor([float(r)]), self_weight=0.5,
                                src_weights={np.int64(left): 0.25, np.int64(right): 0.25},
                                dst_weights={np.int64(left): 1.0, np.int64(right): 1.0})
    assert out.item() == 0.5 * r + 0.25 * left + 0.25 * right
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(r)
    bf.broadcast_parameters(model.state_dict(), root_rank=np.int64(2))
    assert model.weight.tolist() == [[2.0, 2.0]]


def test_numpy_ranks_in_window_ops():
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.RingGraph(n))
    x = torch.tensor([float(r + 1)], dtype=torch.float64)
    bf.win_create(x, "np_ranks", zero_init=True)
    right, left = np.int64((r + 1) % n), np.int64((r - 1) % n)
    bf.win_put(x, "np_ranks", dst_weights={right: 2.0})
    with bf.win_mutex("np_ranks", ranks=[right]):
        pass
    bf.barrier()
    got = bf.win_update("np_ranks", self_weight=0.0, neighbor_weights={left: 1.0}, clone=True)
    assert got.item() == 2.0 * (int(left) + 1)
    bf.barrier()


@pytest.mark.parametrize("bad", [1.0, True, np.float64(1.0), "1", -1, 10_000])
def test_non_integral_and_out_of_range_ranks_are_refused(bad):
    x = torch.tensor([1.0])
    with pytest.raises(ValueError, match=r"broadcast: root_rank=.* is not a rank of the job"):
        bf.broadcast(x, root_rank=bad)
    with pytest.raises(ValueError, match=r"src_ranks: rank .* is not in the job"):
        bf.neighbor_allgather(x, src_ranks=[bad], dst_ranks=[bad])


# --- associated p --------------------------------------------------------------------------------

def _ring_roles(sender: int) -> tuple[int, int]:
    n = bf.size()
    return (sender - 1) % n, (sender + 1) % n


def test_associated_p_after_one_accumulate_on_a_ring():
    # Buffers start with p = 0 (even without zero_init): only what neighbours send counts.
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.RingGraph(n))
    bf.turn_on_win_ops_with_associated_p()
    for sender in range(n):
        name = f"p_acc_{sender}"
        bf.win_create(torch.full((3,), float(r)), name)
        assert bf.win_associated_p(name) == 1.0
        left, right = _ring_roles(sender)
        if r == sender:
            bf.win_accumulate(torch.full((3,), float(r)), name, self_weight=0.5,
                              dst_weights={left: 0.5, right: 0.5})
        bf.barrier()
        bf.win_update_then_collect(name)
        expected = 0.5 if r == sender else 1.5 if r in (left, right) else 1.0
        assert bf.win_associated_p(name) == expected
    # Every window keeps its own p: the earlier windows are unchanged by the later ones.
    for sender in range(n):
        left, right = _ring_roles(sender)
        expected = 0.5 if r == sender else 1.5 if r in (left, right) else 1.0
        assert bf.win_associated_p(f"p_acc_{sender}") == expected
    bf.barrier()


@pytest.mark.parametrize("op", ["put", "accumulate"])
def test_associated_p_of_two_puts_replaces_and_of_two_accumulates_adds(op):
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.RingGraph(n))
    bf.turn_on_win_ops_with_associated_p()
    bf.win_create(torch.zeros(2), "p_twice", zero_init=True)
    bf.win_create(torch.zeros(2), "p_other", zero_init=True)  # alive alongside, untouched
    left, right = _ring_roles(0)
    if r == 0:
        send = bf.win_put if op == "put" else bf.win_accumulate
        for _ in range(2):  # p sent: 1 * 0.5, then (1 * 0.5) * 0.5
            send(torch.ones(2), "p_twice", self_weight=0.5, dst_weights={left: 0.5, right: 0.5})
    bf.barrier()
    bf.win_update_then_collect("p_twice")
    received = 0.25 if op == "put" else 0.5 + 0.25
    expected = 0.25 if r == 0 else 1.0 + received if r in (left, right) else 1.0
    assert bf.win_associated_p("p_twice") == expected
    assert bf.win_associated_p("p_other") == 1.0
    bf.barrier()


def test_associated_p_through_weighted_win_update_and_off_switch():
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.RingGraph(n))
    bf.win_create(torch.zeros(1), "p_weighted", zero_init=True)
    left, right = _ring_roles(0)
    bf.turn_on_win_ops_with_associated_p()
    if r == 0:
        bf.win_put(torch.ones(1), "p_weighted", dst_weights={left: 1.0, right: 1.0})
    bf.barrier()
    if r in (left, right):  # p = 0.5 * 1 + 0.25 * (1 * 1.0) from rank 0
        bf.win_update("p_weighted", self_weight=0.5, neighbor_weights={0: 0.25})
        assert bf.win_associated_p("p_weighted") == 0.75
    else:
        assert bf.win_associated_p("p_weighted") == 1.0
    bf.turn_off_win_ops_with_associated_p()
    before = bf.win_associated_p("p_weighted")
    bf.win_update("p_weighted", self_weight=0.5, neighbor_weights={})
    assert bf.win_associated_p("p_weighted") == before  # off: p is left alone
    bf.barrier()


# --- DistributedWinPutOptimizer: window names and unregister_window ------------------------------

def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))


def _train_and_fail(model):
    opt = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model,
                                        window_prefix="CPU")
    raise RuntimeError(f"training failed with windows {opt.window_names}")


def test_win_put_optimizers_never_collide_and_unregister_window_frees():
    model = _model()
    with pytest.raises(RuntimeError, match="training failed"):
        _train_and_fail(model)  # its optimizer is never unregistered
    leaked = bf.get_current_created_window_names()
    assert leaked and all(name.startswith("CPU.") for name in leaked)
    # The next instances, with the same prefix, are created all the same, under new names.
    first = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model,
                                          window_prefix="CPU")
    second = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model,
                                           window_prefix="CPU")
    firsts, seconds = first.window_names, second.window_names
    assert firsts and seconds and all(name.startswith("CPU.") for name in firsts + seconds)
    assert len(set(leaked) | set(firsts) | set(seconds)) == len(leaked) + len(firsts) + len(seconds)
    assert bf.get_current_created_window_names() == sorted(leaked + firsts + seconds)
    second.unregister_window()
    assert bf.get_current_created_window_names() == sorted(leaked + firsts)
    first.unregister_window()
    first.unregister_window()  # again: nothing left to free
    assert bf.get_current_created_window_names() == sorted(leaked)


# --- local aggregation: k backward passes, then one step() -------------------------------------

def _twice_model(r: int) -> torch.nn.Module:
    """y = W (W x + b) + b: one Linear used twice in a forward, parameters r-dependent."""

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 2).double()
            with torch.no_grad():
                self.fc.weight.copy_(torch.tensor([[1.0, 0.5], [0.25, 1.0]]) * (r + 1))
                self.fc.bias.fill_(0.5 * r)

        def forward(self, x):
            return self.fc(self.fc(x))

    return Twice()


def _batches(r: int) -> list[torch.Tensor]:
    return [torch.tensor([[1.0 + r, 2.0]], dtype=torch.float64), torch.tensor([[-1.0, 0.5 * r]], dtype=torch.float64)]


def test_gradient_allreduce_communicates_once_per_k_backward_passes():
    r = bf.rank()
    model, reference = _twice_model(r), _twice_model(r)
    opt = bf.DistributedGradientAllreduceOptimizer(torch.optim.SGD(model.parameters(), lr=0.125), model=model,
                                                   num_steps_per_communication=2)
    with _no_warnings():
        opt.zero_grad()
        for x in _batches(r):
            model(x).sum().backward()
        opt.step()
    # Reference: the same two passes accumulated locally, the sums averaged over ranks, one SGD step.
    for x in _batches(r):
        reference(x).sum().backward()
    grads = [bf.allreduce(p.grad, average=True) for p in reference.parameters()]
    with torch.no_grad():
        expected = [p - 0.125 * g for p, g in zip(reference.parameters(), grads)]
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # One pass and a step() before the second pass: nothing happens yet (accumulation).
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    model(_batches(r)[0]).sum().backward()
    assert opt.step() is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model(_batches(r)[1]).sum().backward()
    opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_gradient_allreduce_keeps_a_gradient_reached_in_fewer_passes():
    r = bf.rank()
    model = torch.nn.ModuleList([_twice_model(r), _twice_model(r + 5)])
    reference = torch.nn.ModuleList([_twice_model(r), _twice_model(r + 5)])
    opt = bf.DistributedGradientAllreduceOptimizer(torch.optim.SGD(model.parameters(), lr=0.125), model=model,
                                                   num_steps_per_communication=2)
    for net in (model, reference):  # pass 1 reaches both modules, pass 2 only the first
        x, y = _batches(r)
        (net[0](x).sum() + net[1](x).sum()).backward()
        net[0](y).sum().backward()
    opt.step()
    grads = [bf.allreduce(p.grad, average=True) for p in reference.parameters()]
    with torch.no_grad():
        expected = [p - 0.125 * g for p, g in zip(reference.parameters(), grads)]
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_win_put_puts_once_per_k_backward_passes():
    r = bf.rank()
    model = _twice_model(r)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(r + 1.0)
    opt = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model=model,
                                        num_steps_per_communication=2, window_prefix="agg")
    (name,) = opt.window_names
    ins = bf.in_neighbor_ranks()
    with _no_warnings():
        opt.zero_grad()
        model(_batches(r)[0]).sum().backward()
        bf.barrier()
        assert bf.get_win_version(name) == {j: 0 for j in ins}  # one pass: nothing put yet
        bf.barrier()
        model(_batches(r)[1]).sum().backward()  # the second pass puts
        bf.barrier()
        assert bf.get_win_version(name) == {j: 1 for j in ins}
        opt.step()  # averages with exactly what every in-neighbour put (lr = 0: no local change)
    expected = (r + 1.0 + sum(j + 1.0 for j in ins)) / (len(ins) + 1)
    for p in model.parameters():
        assert torch.allclose(p, torch.full_like(p, expected), rtol=0, atol=1e-12)
    bf.barrier()
    opt.unregister_window()


def test_win_put_force_barrier_averages_this_rounds_puts():
    r = bf.rank()
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(r + 1.0)
    opt = bf.DistributedWinPutOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model=model,
                                        window_prefix="lockstep")
    opt.force_barrier = True  # no barrier of ours: the optimizer's makes every put land first
    model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    opt.step()
    ins = bf.in_neighbor_ranks()
    expected = (r + 1.0 + sum(j + 1.0 for j in ins)) / (len(ins) + 1)
    for p in model.parameters():
        assert torch.allclose(p, torch.full_like(p, expected), rtol=0, atol=1e-12)
    bf.barrier()
    opt.unregister_window()


def test_win_put_optimizer_keeps_ranks_in_step_unless_negotiation_is_skipped():
    # BlueFog's negotiation stage (on by default) holds every rank in step with the
    # others; with it skipped, its win-put optimizer runs fully asynchronously.
    models = [torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)]
    sgd = [torch.optim.SGD(model.parameters(), lr=0.0) for model in models]
    bound = bf.DistributedWinPutOptimizer(sgd[0], model=models[0], window_prefix="bounded")
    assert bound.max_lag == 0
    bf.set_skip_negotiate_stage(True)
    try:
        free = bf.DistributedWinPutOptimizer(sgd[1], model=models[1], window_prefix="free")
    finally:
        bf.set_skip_negotiate_stage(False)
    assert free.max_lag is None
    free.unregister_window()
    bound.unregister_window()


class _no_warnings:
    """BlueFog warns 'Unexpected behavior' when passes and steps disagree; none must appear."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        return False


# --- suspend / resume ------------------------------------------------------------------------------

def test_suspend_holds_nonblocking_ops_until_resume():
    n, r = bf.size(), bf.rank()
    bf.suspend()
    handle = bf.allreduce_nonblocking(torch.tensor([float(r)]), average=False)
    if bf.mpi_threads_supported():  # without a communication thread, ops run as issued
        assert not bf.poll(handle)  # queued, not started
    bf.resume()
    assert bf.synchronize(handle).item() == n * (n - 1) / 2
    bf.suspend()
    # Waiting on a handle while suspended still runs its op instead of hanging.
    assert bf.allreduce(torch.tensor([1.0]), average=False).item() == n
    bf.resume()
