"""Per-rank checks of the distributed optimizers and replica helpers (run under mpirun, 1-4 ranks).

Reference values come from plain single-process torch on the same data, or from closed forms.
"""

import os

import pytest
import torch

import asyncddp as addp
from asyncddp.optim import DistributedOptimizer

torch.set_num_threads(1)


def _mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5), torch.nn.Tanh(),
        torch.nn.Linear(5, 1),
    )  # fmt: skip


def _global_batch(batch_per_rank=4):
    g = torch.Generator().manual_seed(1234)
    n = addp.size()
    x = torch.randn(n * batch_per_rank, 6, generator=g)
    y = torch.randn(n * batch_per_rank, 1, generator=g)
    return x, y


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _all_equal_to(tensor, root=0):
    """True on every rank when every rank's tensor equals root's bit for bit."""
    reference = addp.broadcast(tensor, root)
    same = torch.tensor([int(torch.equal(reference, tensor))])
    return addp.allreduce(same, average=False, op="min").item() == 1


# ---------------------------------------------------------------- replica helpers
@pytest.mark.parametrize("form", ["state_dict", "named", "list"])
def test_broadcast_parameters_bit_identical(form):
    model = _mlp(seed=100 + addp.rank())
    root = addp.size() - 1
    reference = _flat(_mlp(seed=100 + root))
    params = {
        "state_dict": model.state_dict(),
        "named": model.named_parameters(),
        "list": list(model.parameters()),
    }[form]
    addp.broadcast_parameters(params, root_rank=root)
    assert torch.equal(_flat(model), reference)
    assert _all_equal_to(_flat(model))


def test_broadcast_parameters_bad_root():
    with pytest.raises(addp.AsyncDDPError, match="root_rank=99 is not a rank"):
        addp.broadcast_parameters(_mlp(0).state_dict(), root_rank=99)


def test_allreduce_parameters_averages():
    t = torch.full((3,), float(addp.rank()), dtype=torch.float64)
    counter = torch.tensor(7)  # integer entries are left alone
    addp.allreduce_parameters({"t": t, "n": counter})
    assert torch.equal(t, torch.full((3,), (addp.size() - 1) / 2, dtype=torch.float64))
    assert counter.item() == 7


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.9)),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: torch.optim.AdamW(ps, lr=0.01, amsgrad=True),
])  # fmt: skip
def test_broadcast_optimizer_state_bit_identical(make):
    model = _mlp(seed=5)
    opt = make(model.parameters())
    x, y = _global_batch()
    # Only rank 0 has stepped (3 times, with its own lr): other ranks have empty lazy state.
    if addp.rank() == 0:
        opt.param_groups[0]["lr"] *= 3
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    addp.broadcast_parameters(model.state_dict(), root_rank=0)
    addp.broadcast_optimizer_state(opt, root_rank=0)
    state = opt.state_dict()
    assert len(state["state"]) == len(list(model.parameters()))
    for entry in state["state"].values():
        for value in entry.values():
            if isinstance(value, torch.Tensor):
                assert _all_equal_to(value.reshape(-1).to(torch.float64))
    assert _all_equal_to(torch.tensor([g["lr"] for g in state["param_groups"]]))
    # One more identical step keeps the replicas bit-identical.
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert _all_equal_to(_flat(model))


# ---------------------------------------------------------------- gradient averaging
def _train_reference(make_opt, steps, seed=7):
    model = _mlp(seed)
    opt = make_opt(model.parameters())
    x, y = _global_batch()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return _flat(model)


def _local_batch():
    x, y = _global_batch()
    n, r = addp.size(), addp.rank()
    b = x.shape[0] // n
    return x[r * b : (r + 1) * b], y[r * b : (r + 1) * b]


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("wrapper", ["gradient", "gradient_small_buckets", "dear_threshold", "dear_layers"])
def test_gradient_averaging_equals_global_batch(kind, wrapper):
    model = _mlp(seed=7)
    inner = OPTIMIZERS[kind](model.parameters())
    if wrapper == "gradient":
        opt = addp.DistributedGradientAllreduceOptimizer(inner, model=model)
    elif wrapper == "gradient_small_buckets":
        # 200 bytes, parameters last to first: (bias3, w3, bias2) 44 B, (w2, bias1) 192 B, (w1) 192 B
        opt = addp.DistributedGradientAllreduceOptimizer(inner, model=model, bucket_mb=200 / 2**20)
        if addp.size() > 1:
            assert [len(b.params) for b in opt._addp_buckets] == [3, 2, 1]
    elif wrapper == "dear_threshold":
        # 200 bytes: the 3 linear layers (224, 180, 24 bytes) land in separate groups
        opt = addp.DistributedDeAROptimizer(inner, model=model, threshold_mb=200 / 2**20)
        assert [len(g.modules) for g in opt._addp_groups] == [1, 1, 1]
    else:
        opt = addp.DistributedDeAROptimizer(inner, model=model, num_nearby_layers=2)
        assert [len(g.modules) for g in opt._addp_groups] == [2, 1]
    assert isinstance(opt, type(inner)) and opt.state is inner.state
    assert isinstance(opt, DistributedOptimizer)
    x, y = _local_batch()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if addp.size() == 1:  # one rank: nothing to exchange, nothing started
            assert not getattr(opt, "_addp_handles", None) and not getattr(opt, "_addp_buckets", None)
            assert all(g.handle is None for g in getattr(opt, "_addp_groups", []))
        elif wrapper.startswith("gradient"):  # every bucket's allreduce was started during backward
            assert opt._addp_buckets and all(b.handle is not None for b in opt._addp_buckets)
        else:  # every group's reduce-scatter was started during backward
            assert all(g.handle is not None for g in opt._addp_groups)
        opt.step()
    if wrapper.startswith("dear"):
        opt.flush()
    expected = _train_reference(OPTIMIZERS[kind], 5)
    torch.testing.assert_close(_flat(model), expected, rtol=1e-5, atol=1e-6)
    assert _all_equal_to(_flat(model))
    opt.remove_hooks()


def test_gradient_buckets_with_a_parameter_backward_never_reaches():
    model = _mlp(seed=7)
    holder = torch.nn.ModuleDict({"net": model, "unused": torch.nn.Linear(2, 2)})
    opt = addp.DistributedGradientAllreduceOptimizer(torch.optim.SGD(holder.parameters(), lr=0.1), holder)
    before = holder["unused"].weight.detach().clone()
    x, y = _local_batch()
    for _ in range(2):  # the bucket holding the unused parameter is started by step() itself
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert holder["unused"].weight.grad is None and torch.equal(holder["unused"].weight, before)
    expected = _train_reference(lambda ps: torch.optim.SGD(ps, lr=0.1), 2)
    torch.testing.assert_close(_flat(model), expected, rtol=1e-5, atol=1e-6)
    opt.remove_hooks()


def test_dear_applies_update_in_next_forward():
    model = _mlp(seed=7)
    opt = addp.DistributedDeAROptimizer(torch.optim.SGD(model.parameters(), lr=0.5), model,
                                        num_nearby_layers=1)  # fmt: skip
    x, y = _local_batch()
    before = _flat(model).clone()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    expected = _train_reference(lambda ps: torch.optim.SGD(ps, lr=0.5), 1)
    if addp.size() == 1:  # one rank: the plain step, applied at once
        torch.testing.assert_close(_flat(model), expected, rtol=1e-5, atol=1e-6)
        return
    assert torch.equal(_flat(model), before)  # nothing applied yet: all-gathers in flight
    opt.zero_grad()
    model(x)  # pre-hooks apply every group's update before its module runs
    assert not opt._addp_pending
    torch.testing.assert_close(_flat(model), expected, rtol=1e-5, atol=1e-6)
    opt.remove_hooks()


WRAPPERS_AT_ONE_RANK = {
    "gradient": lambda o, m: addp.DistributedGradientAllreduceOptimizer(o, m),
    "dear": lambda o, m: addp.DistributedDeAROptimizer(o, m),
    "atc": lambda o, m: addp.DistributedNeighborAllreduceOptimizer(o, m),
    "awc": lambda o, m: addp.DistributedNeighborAllreduceOptimizer(o, m, atc=False),
    "one-peer": lambda o, m: addp.DistributedNeighborAllreduceOptimizer(
        o, m, schedule=addp.one_peer_exponential_two),
    "hierarchical": lambda o, m: addp.DistributedHierarchicalNeighborAllreduceOptimizer(o, m),
    "win-put": lambda o, m: addp.DistributedWinPutOptimizer(o, m, window_prefix="solo"),
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS_AT_ONE_RANK))
def test_one_rank_steps_are_plain_steps_without_communication(wrapper):
    if addp.size() != 1:
        pytest.skip("the one-rank fast path")
    # Averaging over one rank is the identity: the wrapper must be the plain optimizer, bit for
    # bit, and issue no communication at all (no op reaches the engine).
    model = _mlp(seed=7)
    opt = WRAPPERS_AT_ONE_RANK[wrapper](torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)
    x, y = _global_batch()
    ops_before = addp.comm_stats().num_ops
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert addp.comm_stats().num_ops == ops_before
    assert torch.equal(_flat(model), _train_reference(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 3))
    for method in ("remove_hooks", "free"):
        if hasattr(opt, method):
            getattr(opt, method)()


def test_gradient_accumulation_steps():
    model = _mlp(seed=7)
    opt = addp.DistributedGradientAllreduceOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, num_steps_per_communication=2
    )
    x, y = _local_batch()
    half = x.shape[0] // 2 if x.shape[0] > 1 else 1
    opt.zero_grad()
    for part in (slice(0, half), slice(half, None)):
        (torch.nn.functional.mse_loss(model(x[part]), y[part], reduction="sum") / x.shape[0]).backward()
        opt.step()
    # Two half-batches accumulated = one step on the whole local batch, averaged over ranks.
    expected = _train_reference(lambda ps: torch.optim.SGD(ps, lr=0.1), 1)
    torch.testing.assert_close(_flat(model), expected, rtol=1e-5, atol=1e-6)
    opt.remove_hooks()


def test_wrapping_errors():
    model = _mlp(0)
    with pytest.raises(addp.AsyncDDPError, match="expected a torch.optim.Optimizer"):
        addp.DistributedGradientAllreduceOptimizer(model, model)
    with pytest.raises(addp.AsyncDDPError, match="communication_type='ring' is not one of"):
        addp.DistributedNeighborAllreduceOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), model, communication_type="ring"
        )
    opt = addp.DistributedGradientAllreduceOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)
    with pytest.raises(addp.AsyncDDPError, match="already wrapped"):
        addp.DistributedDeAROptimizer(opt, model)
    opt.remove_hooks()
    with pytest.raises(addp.AsyncDDPError, match="updates none of model's parameters"):
        addp.DistributedGradientAllreduceOptimizer(torch.optim.SGD(_mlp(1).parameters(), lr=0.1), model)
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(addp.OptimizerError, match="bucket_mb must be a positive number of MiB, got 0"):
        addp.DistributedGradientAllreduceOptimizer(plain, model, bucket_mb=0)
    addp.DistributedGradientAllreduceOptimizer(plain, model).remove_hooks()  # the refusal left it unwrapped


# ---------------------------------------------------------------- neighbour averaging
def _scalar_model(value):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _uniform_mix(values):
    """One uniform neighbour-averaging step over the default topology, from all ranks' values."""
    r = addp.rank()
    ins = addp.in_neighbor_ranks()
    return (values[r] + sum(values[j] for j in ins)) / (len(ins) + 1)


def test_atc_averages_one_flat_buffer_per_dtype_in_place():
    # Parameters of two dtypes: two flat groups, each parameter a view into its group's buffer,
    # one op per group per round, and the result is the exact uniform mix of the ranks' values.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2).double())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(addp.rank() + 1))
    opt = addp.DistributedNeighborAllreduceOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model)
    groups = {flat.dtype: (flat, params) for flat, params in opt._addp_flat}
    assert set(groups) == {torch.float32, torch.float64}
    for flat, params in groups.values():
        assert flat.numel() == sum(p.numel() for p in params)
        assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in params)
    ops_before = addp.comm_stats().num_ops
    x = torch.ones(1, 3)
    out = model[1](model[0](x).double())
    torch.nn.functional.mse_loss(out, torch.zeros(1, 2, dtype=torch.float64)).backward()
    opt.step()
    members = [addp.rank(), *addp.in_neighbor_ranks()]
    want = sum(j + 1.0 for j in members) / len(members)  # lr 0: the step is pure averaging
    for p in model.parameters():
        assert torch.allclose(p.double(), torch.full_like(p, want, dtype=torch.float64), rtol=0, atol=1e-6)
    assert addp.comm_stats().num_ops - ops_before == (2 if addp.size() > 1 else 0)
    flat32 = groups[torch.float32][0]
    assert model[0].weight.untyped_storage().data_ptr() == flat32.untyped_storage().data_ptr()
    # A parameter moved away after wrapping (as model.to() does) is flattened afresh, not lost.
    model[0].bias.data = model[0].bias.data.clone().fill_(10.0 * (addp.rank() + 1))
    opt.step()
    want = sum(10.0 * (j + 1) for j in members) / len(members)
    assert torch.allclose(model[0].bias, torch.full_like(model[0].bias, want), rtol=0, atol=1e-5)
    if addp.size() > 1:  # one rank runs no round at all
        assert any(model[0].bias.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
                   for flat, _ in opt._addp_flat)


@pytest.mark.parametrize("atc", [True, False])
def test_one_step_atc_and_awc_exact(atc):
    n, lr = addp.size(), 0.25
    w = [float(j + 1) for j in range(n)]
    c = [float(2 * j - 1) for j in range(n)]  # loss w*c_r: gradient c_r
    model = _scalar_model(w[addp.rank()])
    opt = addp.DistributedNeighborAllreduceOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), model, atc=atc
    )
    (model.weight.sum() * c[addp.rank()]).backward()
    # AWC starts the parameter exchange from the gradient hook, during backward.
    assert len(opt._addp_handles) == (0 if atc or n == 1 else 1)
    opt.step()
    if atc:  # w+ = W (w - lr c)
        expected = _uniform_mix([w[j] - lr * c[j] for j in range(n)])
    else:  # w+ = W w - lr c
        expected = _uniform_mix(w) - lr * c[addp.rank()]
    assert model.weight.item() == pytest.approx(expected, abs=1e-6)
    opt.remove_hooks()


@pytest.mark.parametrize("ctype", ["allreduce", "empty"])
def test_allreduce_and_empty_communication(ctype):
    n, lr = addp.size(), 0.5
    model = _scalar_model(float(addp.rank()))
    opt = addp.DistributedNeighborAllreduceOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), model, communication_type=ctype
    )
    (model.weight.sum() * 2.0).backward()
    opt.step()
    local = addp.rank() - lr * 2.0
    expected = sum(j - lr * 2.0 for j in range(n)) / n if ctype == "allreduce" else local
    assert model.weight.item() == pytest.approx(expected, abs=1e-6)


def _regression_data():
    g = torch.Generator().manual_seed(42)
    w_star = torch.randn(8, 1, generator=g)
    g.manual_seed(1000 + addp.rank())
    x = torch.randn(32, 8, generator=g)
    return x, x @ w_star, w_star


def _train_decentralized(opt, model, steps, before_step=None):
    x, y, _ = _regression_data()
    for t in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if before_step is not None:
            before_step(opt, t)
        opt.step()
    return torch.nn.functional.mse_loss(model(x), y).item()


def _set_one_peer(opt, t):
    """The seed's idiom: the dynamic one-peer Exp-2 step set by hand before each step."""
    n, r = addp.size(), addp.rank()
    if n == 1:
        return
    shift = 2 ** (t % (n - 1).bit_length())
    opt.send_neighbors = [(r + shift) % n]
    opt.neighbor_weights = {(r - shift) % n: 0.5}
    opt.self_weight = 0.5


@pytest.mark.parametrize("setup", ["static_atc", "static_awc", "schedule_atc", "schedule_awc",
                                   "manual_dynamic", "every_2_steps"])  # fmt: skip
def test_neighbor_averaging_converges(setup):
    torch.manual_seed(3 + addp.rank())  # replicas start apart on purpose
    model = torch.nn.Linear(8, 1, bias=False)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {"atc": not setup.endswith("awc")}
    if setup.startswith("schedule"):
        kwargs["schedule"] = addp.one_peer_exponential_two
    if setup == "every_2_steps":
        kwargs["num_steps_per_communication"] = 2
    opt = addp.DistributedNeighborAllreduceOptimizer(inner, model, **kwargs)
    assert isinstance(opt, torch.optim.SGD)
    loss = _train_decentralized(opt, model, 150, _set_one_peer if setup == "manual_dynamic" else None)
    assert loss < 1e-4, loss
    w = model.weight.detach().clone()
    addp.allreduce_parameters(model.parameters())
    assert (w - model.weight.detach()).abs().max().item() < 1e-3
    _, _, w_star = _regression_data()
    assert (model.weight.detach().reshape(-1) - w_star.reshape(-1)).abs().max().item() < 1e-2
    opt.remove_hooks()


def test_lr_scheduler_and_state_dict_keep_working():
    model = torch.nn.Linear(8, 1, bias=False)
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    opt = addp.DistributedNeighborAllreduceOptimizer(inner, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    _train_decentralized(opt, model, 1)
    sched.step()
    _train_decentralized(opt, model, 1)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert inner.param_groups[0]["lr"] == pytest.approx(0.05)
    state = opt.state_dict()
    assert "momentum_buffer" in state["state"][0]
    opt.load_state_dict(state)
    assert opt.param_groups is inner.param_groups or opt.param_groups == inner.param_groups


def test_schedule_with_aux_buffer_refused():
    if addp.size() < 2:
        pytest.skip("CECA needs 2+ ranks")
    model = _scalar_model(1.0)
    opt = addp.DistributedNeighborAllreduceOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, schedule=addp.ceca_schedule
    )
    model.weight.sum().backward()
    with pytest.raises(addp.AsyncDDPError, match="auxiliary buffer"):
        opt.step()


@pytest.mark.skipif(os.environ.get("ASYNCDDP_RANKS_PER_MACHINE") != "2", reason="fake machines only")
@pytest.mark.parametrize("atc", [True, False])
def test_hierarchical_one_step_exact(atc):
    n, lr = addp.size(), 0.25
    model = _scalar_model(float(addp.rank() + 1))
    opt = addp.DistributedHierarchicalNeighborAllreduceOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), model, atc=atc
    )
    (model.weight.sum() * 2.0).backward()
    opt.step()
    # 2 machines of 2 ranks: machine means, then the two machines average with each other,
    # which is the global mean: of w - 2 lr (ATC), or of w, then minus 2 lr (AWC).
    expected = sum(j + 1 for j in range(n)) / n - lr * 2.0
    assert model.weight.item() == pytest.approx(expected, abs=1e-6)
    opt.remove_hooks()
