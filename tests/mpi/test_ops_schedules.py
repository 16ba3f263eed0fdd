"""Every dynamic schedule of asyncddp.topology, run through neighbor_allreduce, matches its numpy simulation."""

import functools

import numpy as np
import pytest
import torch

import asyncddp as addp
from asyncddp.topology.ceca import ceca_schedule
from asyncddp.topology.equitopo import equi_dyn_schedule
from asyncddp.topology.schedules import inner_outer_exponential_two, one_peer_exponential_two
from asyncddp.topology.simulate import consensus_states


def _factories(n):
    local = n if n > 2 else 1
    return {
        "one_peer_exponential_two": one_peer_exponential_two,
        "inner_outer_exponential_two": lambda n, rank: inner_outer_exponential_two(n, local, rank),
        "ceca_schedule": ceca_schedule,
        "equi_dyn_od": functools.partial(equi_dyn_schedule, eta=0.5, seed=3),
        "equi_dyn_ou": functools.partial(equi_dyn_schedule, eta=0.4, seed=5, undirected=True),
    }


@pytest.mark.parametrize(
    "which",
    ["one_peer_exponential_two", "inner_outer_exponential_two", "ceca_schedule", "equi_dyn_od", "equi_dyn_ou"],
)
def test_schedule_matches_simulation(which):
    r, n = addp.rank(), addp.size()
    factory = _factories(n)[which]
    x0 = np.random.default_rng(11).normal(size=(n, 6))
    num_steps = 7
    expected = list(consensus_states(factory, n, num_steps, x0))
    schedule = factory(n, rank=r)
    x = torch.tensor(x0[r], dtype=torch.float64)
    aux = torch.zeros_like(x)
    for k in range(num_steps):
        step = next(schedule)
        if step.has_aux:
            sent = x if step.send_buffer == "x" else aux
            received = addp.neighbor_allreduce(sent, **step.exchange_kwargs())
            x, aux = step.combine(x, aux, received)
        else:
            x = addp.neighbor_allreduce(x, **step.as_kwargs())
        np.testing.assert_allclose(x.numpy(), expected[k + 1][r], rtol=1e-12, atol=1e-12, err_msg=f"{which} step {k}")
