"""Per-rank checks of BlueFog's optimizer names, imported as ``import bluefog.torch as bf``.

Run at 4 ranks with BLUEFOG_NODES_PER_MACHINE=2 (two fake machines, for the hierarchical type).
Exact one-step values come from the closed forms of AWC/ATC; the regression test is BlueFog's
own idea: every optimizer must fit a consistent linear model to a tiny error on every rank.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import asyncddp.compat

asyncddp.compat.install_bluefog_alias()
import bluefog.torch as bf  # noqa: E402
from bluefog.common import topology_util  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def _bf():
    bf.init()
    yield
    bf.win_free()
    bf.set_topology(topology_util.ExponentialGraph(bf.size()))


def _scalar_model(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _one_step(opt, model):
    """loss = w^2 / 2, so grad(w) = w."""
    opt.zero_grad()
    (0.5 * model.weight.pow(2).sum()).backward()
    opt.step()
    return model.weight.item()


def _uniform_mix(values: dict[int, float]) -> float:
    r = bf.rank()
    ins = bf.in_neighbor_ranks()
    return (values[r] + sum(values[j] for j in ins)) / (1 + len(ins))


def test_awc_and_atc_one_step_closed_forms():
    r, lr = bf.rank(), 0.5
    values = {j: float(j + 1) for j in range(bf.size())}
    model = _scalar_model(values[r])
    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=lr), model)
    assert isinstance(opt, torch.optim.SGD)
    assert _one_step(opt, model) == pytest.approx(_uniform_mix(values) - lr * values[r], abs=1e-12)

    model = _scalar_model(values[r])
    opt = bf.DistributedAdaptThenCombineOptimizer(
        torch.optim.SGD(model.parameters(), lr=lr), model, bf.CommunicationType.neighbor_allreduce
    )
    assert _one_step(opt, model) == pytest.approx((1 - lr) * _uniform_mix(values), abs=1e-12)


@pytest.mark.parametrize("idiom", ["src_dst", "send_neighbors"])
def test_settable_weights_give_a_ring(idiom):
    n, r, lr = bf.size(), bf.rank(), 0.25
    model = _scalar_model(float(r))
    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=lr), model)
    opt.self_weight = 0.5
    if idiom == "src_dst":
        opt.src_weights, opt.dst_weights = {(r - 1) % n: 0.5}, {(r + 1) % n: 1.0}
    else:
        opt.neighbor_weights, opt.send_neighbors = {(r - 1) % n: 0.5}, [(r + 1) % n]
    expected = 0.5 * r + 0.5 * ((r - 1) % n) - lr * r
    assert _one_step(opt, model) == expected


def test_legacy_names_take_steps_positionally_and_warn():
    model = _scalar_model(float(bf.rank()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = bf.DistributedNeighborAllreduceOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, 3)
    assert opt.num_steps_per_communication == 3
    assert opt.communication_type == "neighbor_allreduce"
    assert any(issubclass(w.category, PendingDeprecationWarning) for w in caught)
    before = model.weight.item()
    # Steps 1 and 2 are local (no communication): w <- 0.9 w, exactly as plain SGD.
    assert _one_step(opt, model) == pytest.approx(0.9 * before, abs=1e-15)
    opt.communication_type = bf.CommunicationType.empty  # settable: step 3 stays local too
    _one_step(opt, model)
    assert _one_step(opt, model) == pytest.approx(0.9**3 * before, abs=1e-15)


def test_bad_communication_type_is_a_value_error():
    model = _scalar_model(1.0)
    with pytest.raises(ValueError, match="communication_type"):
        bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, "gossip")
    # BlueFog's enum *values* are accepted as strings too.
    opt = bf.DistributedAdaptThenCombineOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model, "hierarchical.neighbor.allreduce"
    )
    assert opt.communication_type == "hierarchical_neighbor_allreduce"


def _regression_data(d=5, m=24):
    truth = torch.arange(1, d + 2, dtype=torch.float64) / d  # weights then bias
    g = torch.Generator().manual_seed(100 + bf.rank())
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = x @ truth[:d] + truth[d]
    return x, y.unsqueeze(1)


FACTORIES = {
    "awc": lambda o, m: bf.DistributedAdaptWithCombineOptimizer(o, m),
    "atc": lambda o, m: bf.DistributedAdaptThenCombineOptimizer(o, m),
    "atc_allreduce": lambda o, m: bf.DistributedAdaptThenCombineOptimizer(o, m, bf.CommunicationType.allreduce),
    "awc_hierarchical": lambda o, m: bf.DistributedAdaptWithCombineOptimizer(
        o, m, communication_type=bf.CommunicationType.hierarchical_neighbor_allreduce),
    "neighbor_allreduce": lambda o, m: bf.DistributedNeighborAllreduceOptimizer(o, m),
    "hierarchical": lambda o, m: bf.DistributedHierarchicalNeighborAllreduceOptimizer(o, m),
    "allreduce": lambda o, m: bf.DistributedAllreduceOptimizer(o, m),
    "gradient_allreduce": lambda o, m: bf.DistributedGradientAllreduceOptimizer(o, m),
    "win_put": lambda o, m: bf.DistributedWinPutOptimizer(o, m, window_prefix="lr_test"),
    "local_steps": lambda o, m: bf.DistributedAdaptThenCombineOptimizer(o, m, num_steps_per_communication=2),
}  # fmt: skip


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("kind", list(FACTORIES))
def test_linear_regression_reaches_tiny_mse(kind):
    x, y = _regression_data()
    torch.manual_seed(bf.rank())  # different starting points on purpose
    model = torch.nn.Linear(x.shape[1], 1).double()
    opt = FACTORIES[kind](torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), model)
    if kind == "gradient_allreduce":
        # Averaged gradients keep replicas apart by their initial difference: start them equal.
        bf.broadcast_parameters(model.state_dict(), root_rank=0)
    # Window puts are asynchronous (neighbours' values may be a step stale): give them longer.
    for _ in range(500 if kind == "win_put" else 150):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    if kind == "win_put":
        bf.barrier()  # every rank finished putting; one more combine sees everyone's last value
        opt.free()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(x), y).item()
    tiny = 1e-6 if kind == "win_put" else 1e-8
    assert mse < tiny, f"{kind}: rank {bf.rank()} mse {mse}"
    total = bf.allreduce(torch.tensor([mse]), average=False).item()
    assert total < bf.size() * tiny


def test_broadcast_parameters_and_optimizer_state():
    r = bf.rank()
    torch.manual_seed(r)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (r + 1))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    bf.broadcast_optimizer_state(opt, root_rank=0)
    weight = bf.broadcast(model.weight.detach().clone(), root_rank=0)
    assert torch.equal(model.weight.detach(), weight)
    assert opt.param_groups[0]["lr"] == 0.01
    assert opt.param_groups[0]["foreach"] is None
    state = opt.state[model.weight]
    assert torch.equal(state["exp_avg"], bf.broadcast(state["exp_avg"].clone(), root_rank=0))
    assert float(state["step"]) == 1.0
    values = [torch.full((2,), float(r))]
    bf.allreduce_parameters(values)
    assert torch.equal(values[0], torch.full((2,), (bf.size() - 1) / 2))
