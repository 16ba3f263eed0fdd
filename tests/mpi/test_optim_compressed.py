"""Per-rank checks of CHOCO-SGD and Local SGD / DiLoCo (run under mpirun with tests/mpi/test_optim.py).

Reference values come from the plain neighbour/allreduce optimizers on the same data, or from
closed forms.
"""

import pytest
import torch

import asyncddp as addp
from asyncddp.comm import payload as payload_module
from asyncddp.errors import OptimizerError
from asyncddp.optim.compression import parse_compressor

torch.set_num_threads(1)


def _regression_data():
    g = torch.Generator().manual_seed(42)
    w_star = torch.randn(8, 1, generator=g)
    g.manual_seed(1000 + addp.rank())
    x = torch.randn(32, 8, generator=g)
    return x, x @ w_star


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def _train_step(opt, model, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _pair(make_reference, make_tested, steps, seed_base=3):
    """Train two copies of one model side by side; the max difference after each step."""
    x, y = _regression_data()
    a, b = _model(seed_base + addp.rank()), _model(seed_base + addp.rank())
    opt_a = make_reference(torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.5), a)
    opt_b = make_tested(torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.5), b)
    diffs = []
    for _ in range(steps):
        _train_step(opt_a, a, x, y)
        _train_step(opt_b, b, x, y)
        diffs.append((_flat(a) - _flat(b)).abs().max().item())
    return diffs


@pytest.mark.parametrize("dynamic", [False, True])
def test_choco_with_identity_equals_neighbour_averaging_step_for_step(dynamic):
    schedule = {"schedule": addp.one_peer_exponential_two} if dynamic else {}
    diffs = _pair(lambda o, m: addp.DistributedNeighborAllreduceOptimizer(o, m, **schedule),
                  lambda o, m: addp.DistributedCompressedNeighborOptimizer(o, m, "identity", 1.0, **schedule),
                  steps=6)
    assert max(diffs) < 1e-6, diffs


@pytest.mark.parametrize("communication", ["allreduce", "neighbor", "one-peer"])
def test_local_sgd_h1_equals_atc_averaging_step_for_step(communication):
    reference = {"allreduce": {"communication_type": "allreduce"}, "neighbor": {},
                 "one-peer": {"schedule": addp.one_peer_exponential_two}}[communication]
    diffs = _pair(lambda o, m: addp.DistributedNeighborAllreduceOptimizer(o, m, **reference),
                  lambda o, m: addp.DistributedLocalSGDOptimizer(o, m, sync_every=1, communication=communication),
                  steps=6)
    assert max(diffs) == 0.0, diffs  # the outer step of plain Local SGD is the average itself


def test_one_peer_with_log2_size_rounds_equals_allreduce_local_sgd():
    # One-peer Exp-2 rounds with offsets 1, 2, 4, ... carry every model to every rank: on a
    # power-of-two world, log2(size) rounds are the exact average.
    n = addp.size()
    if n & (n - 1):
        pytest.skip("exact only on a power-of-two world")
    rounds = max(1, n.bit_length() - 1)
    diffs = _pair(lambda o, m: addp.DistributedLocalSGDOptimizer(o, m, sync_every=2, communication="allreduce"),
                  lambda o, m: addp.DistributedLocalSGDOptimizer(o, m, sync_every=2, communication="one-peer",
                                                                 gossip_rounds=rounds),
                  steps=6)
    assert max(diffs) < 1e-6, diffs


def _scalar(value):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_diloco_outer_update_equals_hand_computation():
    # Loss w·c_r: every local step moves w by -lr·c_r. H=2 local steps per round, 2 rounds.
    n, r, lr, h = addp.size(), addp.rank(), 0.1, 2
    c = [float(j + 1) for j in range(n)]
    model = _scalar(1.0)
    opt = addp.DistributedLocalSGDOptimizer(torch.optim.SGD(model.parameters(), lr=lr), model, sync_every=h,
                                            outer_lr=0.7, outer_momentum=0.9, nesterov=True,
                                            communication="allreduce")  # fmt: skip
    w, m = 1.0, 0.0
    for _ in range(2):
        local = [w] * n
        for t in range(h):
            opt.zero_grad()
            (model.weight.sum() * c[r]).backward()
            opt.step()
            local = [v - lr * c[j] for j, v in enumerate(local)]
            if t < h - 1:  # between outer steps: the plain local model
                assert model.weight.item() == pytest.approx(local[r], abs=1e-6)
        delta = w - sum(local) / n
        m = 0.9 * m + delta
        w = w - 0.7 * (delta + 0.9 * m)
        assert model.weight.item() == pytest.approx(w, abs=1e-6)
    assert opt._addp_momentum[0].item() == pytest.approx(m, abs=1e-6)


def _sent_sizes(monkeypatch):
    """Bytes of every payload this rank hands to the exchange, per destination."""
    sent = []
    real = payload_module.p2p.exchange

    def recording(engine, comm, sends, specs, like):
        sent.append({d: t.numel() * t.element_size() for d, t in sends.items()})
        return real(engine, comm, sends, specs, like)

    monkeypatch.setattr(payload_module.p2p, "exchange", recording)
    return sent


@pytest.mark.parametrize("spec", ["topk:0.1", "int8", "sign", "randk:0.25"])
def test_choco_sends_the_compressed_payload_and_reaches_consensus(spec, monkeypatch):
    sent = _sent_sizes(monkeypatch)
    x, y = _regression_data()
    model = _model(3 + addp.rank())
    addp.reset_comm_stats()
    opt = addp.DistributedCompressedNeighborOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model, spec,
                                                      schedule=addp.one_peer_exponential_two)  # fmt: skip
    first = _train_step(opt, model, x, y)
    for _ in range(150):
        last = _train_step(opt, model, x, y)
    if addp.size() == 1:
        assert sent == []
        return
    dense = sum(p.numel() * 4 for p in model.parameters())
    compressed = parse_compressor(spec).nbytes(sum(p.numel() for p in model.parameters()), torch.float32)
    new_edges = max(1, (addp.size() - 1).bit_length())  # one-peer Exp-2: one dense send per new edge
    sizes = [size for round_ in sent for size in round_.values()]
    assert len(sizes) == 151
    assert sizes.count(dense) == new_edges and sizes.count(compressed) == 151 - new_edges
    # The comm core's byte counters see exactly those payloads, nothing dense besides.
    assert addp.comm_stats().bytes_by_kind["exchange_payloads"] == sum(sizes)
    assert last < 0.5 * first
    w = _flat(model)
    average = addp.allreduce(w, average=True)
    assert (w - average).abs().max().item() < 0.15  # started ~1 apart; non-IID data keeps some


@pytest.mark.parametrize(("spec", "steps", "shrink"), [("int8", 20, 1e-4), ("topk:0.2", 60, 1e-2)])
def test_choco_pure_consensus_keeps_the_mean_and_contracts(spec, steps, shrink):
    # lr 0: only gossip moves the models. CHOCO keeps the average of the models (the pulls of a
    # doubly stochastic round cancel) and drives every model to it.
    torch.manual_seed(addp.rank())
    model = torch.nn.Linear(20, 20)
    opt = addp.DistributedCompressedNeighborOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), model, spec)
    start = _flat(model)
    mean = addp.allreduce(start, average=True)
    for _ in range(steps):
        opt.step()
    now = _flat(model)
    assert (addp.allreduce(now, average=True) - mean).abs().max().item() < 1e-5
    if addp.size() > 1:
        error = addp.allreduce((now - mean).norm().reshape(1)).item()
        assert error < shrink * addp.allreduce((start - mean).norm().reshape(1)).item()


def test_local_sgd_compressed_allreduce_keeps_replicas_identical(monkeypatch):
    sent = _sent_sizes(monkeypatch)
    x, y = _regression_data()
    model = _model(5)
    opt = addp.DistributedLocalSGDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model, sync_every=4,
                                            outer_lr=0.7, outer_momentum=0.9, nesterov=True,
                                            communication="allreduce", compressor="int8")  # fmt: skip
    first = _train_step(opt, model, x, y)
    for _ in range(79):
        last = _train_step(opt, model, x, y)
    assert last < first
    reference = addp.broadcast(_flat(model), 0)
    assert torch.equal(reference, _flat(model))  # every rank decoded the same payloads
    numel = sum(p.numel() for p in model.parameters())
    assert len(sent) == (20 if addp.size() > 1 else 0)
    assert all(set(s.values()) == {numel + 4} for s in sent)  # int8: one byte each, one scale


@pytest.mark.parametrize("communication", ["neighbor", "one-peer"])
def test_diloco_gossip_with_int4_converges(communication):
    x, y = _regression_data()
    model = _model(3 + addp.rank())
    opt = addp.DistributedLocalSGDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model, sync_every=4,
                                            outer_lr=0.7, outer_momentum=0.9, nesterov=True,
                                            communication=communication, compressor="int4")  # fmt: skip
    first = _train_step(opt, model, x, y)
    for _ in range(199):
        last = _train_step(opt, model, x, y)
    assert last < 0.5 * first


def test_state_dict_carries_the_outer_state(tmp_path):
    x, y = _regression_data()
    model = _model(5)
    opt = addp.DistributedLocalSGDOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), model,
                                            sync_every=2, outer_lr=0.7, outer_momentum=0.9, nesterov=True,
                                            communication="allreduce")  # fmt: skip
    for _ in range(4):
        _train_step(opt, model, x, y)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    # Through a file as load_checkpoint reads it (weights_only): the outer state must load that way.
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    saved = torch.load(tmp_path / "opt.pt", weights_only=True)
    assert saved["asyncddp"]["step"] == 4
    for _ in range(4):
        _train_step(opt, model, x, y)
    after = _flat(model)
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved)
    for _ in range(4):
        _train_step(opt, model, x, y)
    assert torch.equal(_flat(model), after)  # resumed exactly
    choco_model = _model(5)
    choco = addp.DistributedCompressedNeighborOptimizer(torch.optim.SGD(choco_model.parameters(), lr=0.05),
                                                        choco_model, "int8")  # fmt: skip
    _train_step(choco, choco_model, x, y)
    state = choco.state_dict()
    assert state["asyncddp"] == {"step": 1}
    choco.load_state_dict(state)
    assert choco._addp_copies.sent == {} and choco._addp_copies.received == {}


@pytest.mark.parametrize(("kwargs", "option"), [
    ({"compressor": "topk:0"}, "compressor='topk:0'"), ({"compressor": "topk:1.5"}, "compressor='topk:1.5'"),
    ({"compressor": "int3"}, "compressor='int3'"), ({"sync_every": 0}, "sync_every"),
    ({"communication": "ring"}, "communication='ring'"), ({"outer_momentum": 1.0}, "outer_momentum"),
    ({"outer_lr": 0}, "outer_lr"), ({"gossip_rounds": 0}, "gossip_rounds"),
])  # fmt: skip
def test_local_sgd_bad_options(kwargs, option):
    model = _model(0)
    with pytest.raises(OptimizerError, match=option.replace("[", r"\[").replace(".", r"\.")):
        addp.DistributedLocalSGDOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, **kwargs)


@pytest.mark.parametrize(("args", "option"), [(("topk:0",), "topk:0"), (("int3",), "int3"),
                                              (("int8", 0.0), "consensus_lr"), (("int8", 1.5), "consensus_lr")])
def test_choco_bad_options(args, option):
    model = _model(0)
    with pytest.raises(OptimizerError, match=option):
        addp.DistributedCompressedNeighborOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, *args)
