"""Dynamic schedules: exact averaging, contraction rates and weight properties (pure numpy)."""

import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncddp.errors import TopologyError
from asyncddp.topology import (
    NeighborStep,
    ceca_exact_average,
    ceca_schedule,
    equi_dyn_schedule,
    exp2_period,
    inner_outer_exponential_two,
    one_peer_exponential_two,
    run_consensus,
    simulate_consensus,
    step_matrix,
)
from asyncddp.topology.ceca import ceca_digits


def _steps(factory, n, count):
    iterators = [factory(n, rank=r) for r in range(n)]
    return [[next(it) for it in iterators] for _ in range(count)]


def test_one_peer_exp2_ranks():
    it = one_peer_exponential_two(8, 0)
    got = [(s.send_ranks, s.recv_ranks) for s in itertools.islice(it, 4)]
    assert got == [((1,), (7,)), ((2,), (6,)), ((4,), (4,)), ((1,), (7,))]
    step = next(one_peer_exponential_two(8, 3))
    assert step.as_kwargs() == {"self_weight": 0.5, "src_weights": {2: 0.5}, "dst_weights": {4: 1.0}}


@pytest.mark.parametrize("n", [2, 4, 8, 64])
def test_one_peer_exp2_exact_after_log2n_steps(n):
    tau = exp2_period(n)
    for start in (0, 1):  # any tau consecutive steps
        product = np.eye(n)
        for step in _steps(one_peer_exponential_two, n, start + tau)[start:]:
            product = step_matrix(step) @ product
        assert np.allclose(product, 1.0 / n, atol=1e-15, rtol=0)
    assert simulate_consensus(one_peer_exponential_two, n, tau)[-1] < 1e-14


@pytest.mark.parametrize("n", [6, 12, 17])
def test_one_peer_exp2_not_exact_otherwise(n):
    assert simulate_consensus(one_peer_exponential_two, n, exp2_period(n))[-1] > 0.01


def test_ceca_digits_and_steps():
    assert ceca_digits(6) == [1, 0, 1] and ceca_digits(8) == [1, 1, 1] and ceca_digits(1) == []
    steps = list(itertools.islice(ceca_schedule(6, 0), 4))
    assert [(s.send_ranks, s.recv_ranks, s.send_buffer) for s in steps] == [
        ((1,), (5,), "x"), ((1,), (5,), "aux"), ((3,), (3,), "x"), ((1,), (5,), "x")]
    # round 2 for n=6: n_ex=1, digit 0 -> x <- (2x + c)/3, aux <- (aux + c)/2
    assert steps[1].self_weight == pytest.approx(2 / 3) and steps[1].src_weights == {5: pytest.approx(1 / 3)}
    assert steps[1].aux_self_weight == 0.5 and steps[1].aux_src_weights == {5: 0.5}


@pytest.mark.parametrize("n", range(2, 71))
def test_ceca_exact_after_ceil_log2n_steps(n):
    tau = exp2_period(n)
    assert len(ceca_digits(n)) == tau
    x = run_consensus(ceca_schedule, n, tau)
    assert np.allclose(x, 1.0 / n, atol=1e-13, rtol=0)
    exact, history = ceca_exact_average(np.eye(n))
    assert np.allclose(exact, 1.0 / n, atol=1e-13, rtol=0) and history[-1] == n - 1
    # and it stays exact in the next period, whatever start
    x0 = np.random.default_rng(n).standard_normal((n, 2))
    assert simulate_consensus(ceca_schedule, n, 2 * tau, x0)[tau:].max() < 1e-12


@pytest.mark.parametrize("n", [3, 6, 11])
def test_ceca_driven_by_one_exchange_per_step(n):
    """What a caller does with neighbor_allreduce(send_buffer, **exchange_kwargs()) + combine."""
    x = np.random.default_rng(0).standard_normal(n)
    aux = np.zeros(n)
    for steps in _steps(ceca_schedule, n, exp2_period(n)):
        sent = [(x if s.send_buffer == "x" else aux)[j] for j, s in enumerate(steps)]
        received = [sum(steps[j].dst_weights[i] * sent[j] for j in s.recv_ranks) for i, s in enumerate(steps)]
        x, aux = map(np.array, zip(*(s.combine(x[i], aux[i], received[i]) for i, s in enumerate(steps))))
    assert np.allclose(x, np.random.default_rng(0).standard_normal(n).mean(), atol=1e-13)


def test_inner_outer_exp2_ranks():
    # 8 ranks, 4 per machine: step 0 local rank 0 crosses machines; step 1 local 1 does and
    # ranks 2, 3, 0 form the inner ring (distance 2 on 3 nodes)
    got = [(s.send_ranks, s.recv_ranks) for s in itertools.islice(inner_outer_exponential_two(8, 4, 0), 3)]
    assert got == [((4,), (4,)), ((3,), (2,)), ((1,), (3,))]
    assert next(inner_outer_exponential_two(8, 4, 5)).send_ranks == (6,)
    with pytest.raises(TopologyError, match="divisor"):
        inner_outer_exponential_two(10, 4, 0)
    with pytest.raises(TopologyError, match="local_size 1 or > 2"):
        inner_outer_exponential_two(6, 2, 0)


@pytest.mark.parametrize("n, local", [(8, 4), (12, 3), (16, 4), (4, 4), (4, 1)])
def test_inner_outer_exp2_converges(n, local):
    errors = simulate_consensus(functools.partial(inner_outer_exponential_two, local_size=local), n, 40)
    assert errors[-1] < 1e-2 and np.all(np.diff(errors) <= 1e-12)


def _od_rate(n, eta=0.5):
    a, b = 1 - eta + eta / n, eta * (n - 1) / n
    return a * a + b * b - 2 * a * b / (n - 1)


@pytest.mark.parametrize("undirected", [False, True])
def test_equi_dyn_contraction_independent_of_n(undirected):
    steps, seeds = 4, 60
    measured = {}
    for n in (16, 64, 128):
        ratios = []
        for seed in range(seeds):
            x0 = np.random.default_rng(1000 + seed).standard_normal(n)
            factory = functools.partial(equi_dyn_schedule, seed=seed, undirected=undirected)
            ratios.append(simulate_consensus(factory, n, steps, x0)[-1] ** 2)
        measured[n] = np.mean(ratios) ** (1 / steps)  # mean squared-error contraction per step
        if not undirected:
            assert measured[n] == pytest.approx(_od_rate(n), rel=0.1)
    assert max(measured.values()) < 0.6
    assert max(measured.values()) - min(measured.values()) < 0.08


def test_equi_dyn_shared_seed():
    a = [s.send_ranks for s in itertools.islice(equi_dyn_schedule(10, 3, seed=7), 6)]
    b = [s.send_ranks for s in itertools.islice(equi_dyn_schedule(10, 3, seed=7), 6)]
    assert a == b
    with pytest.raises(TopologyError, match="eta"):
        equi_dyn_schedule(10, 3, eta=0)


def test_mismatched_schedule_is_rejected():
    def broken(n, rank):  # receives from the rank it sends to: only right for n = 2
        peer = (rank + 1) % n
        return itertools.repeat(NeighborStep((peer,), (peer,), 0.5, {peer: 0.5}, {peer: 1.0}))

    with pytest.raises(TopologyError, match="step 0: rank 0 sends to 1"):
        simulate_consensus(broken, 3, 1)


DOUBLY_STOCHASTIC = {
    "one-peer": one_peer_exponential_two,
    "inner-outer": functools.partial(inner_outer_exponential_two, local_size=1),
    "od-equi-dyn": functools.partial(equi_dyn_schedule, seed=3),
    "ou-equi-dyn": functools.partial(equi_dyn_schedule, seed=3, undirected=True, eta=0.3),
}


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(DOUBLY_STOCHASTIC)), n=st.integers(1, 24), k=st.integers(0, 6))
def test_plain_schedules_keep_the_average(name, n, k):
    """Rows and columns of every step matrix sum to 1: the average is kept, every step."""
    matrix = step_matrix(_steps(DOUBLY_STOCHASTIC[name], n, k + 1)[k])
    assert np.allclose(matrix.sum(axis=0), 1.0) and np.allclose(matrix.sum(axis=1), 1.0)
    assert (matrix >= 0).all()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), local=st.sampled_from([1, 3, 4]), k=st.integers(0, 8))
def test_inner_outer_keeps_the_average(n, local, k):
    n = n - n % local or local
    matrix = step_matrix(_steps(functools.partial(inner_outer_exponential_two, local_size=local), n, k + 1)[k])
    assert np.allclose(matrix.sum(axis=0), 1.0) and np.allclose(matrix.sum(axis=1), 1.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 70), k=st.integers(0, 7))
def test_ceca_updates_are_averages(n, k):
    """CECA does not keep the average every step, but each update is an average: weights sum
    to 1 for x and for aux, and after tau steps the state is exactly the global average."""
    step = list(itertools.islice(ceca_schedule(n, k % n), k + 1))[k]
    (src,) = step.recv_ranks
    assert step.self_weight + step.src_weights[src] == pytest.approx(1.0)
    if step.aux_self_weight:  # the first round of a period overwrites aux entirely
        assert step.aux_self_weight + step.aux_src_weights[src] == pytest.approx(1.0)
    else:
        assert step.aux_src_weights[src] == 1.0
