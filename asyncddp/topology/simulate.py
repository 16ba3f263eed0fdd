"""Run a schedule for all ranks at once in numpy: what ``neighbor_allreduce`` would compute.

One step, with ``buf_j`` the buffer rank j sends (``x_j``, or ``aux_j`` for CECA's aux steps)::

    x_i   <- self_weight_i     * x_i   + sum_{j in recv_i} src_weights_i[j]     * dst_weights_j[i] * buf_j
    aux_i <- aux_self_weight_i * aux_i + sum_{j in recv_i} aux_src_weights_i[j] * dst_weights_j[i] * buf_j

``aux`` starts at zero. Every step is checked the way ``neighbor_allreduce`` checks topologies:
j in ``recv_i`` exactly when i is in ``send_j``, otherwise ``TopologyError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import networkx as nx
import numpy as np

from asyncddp.errors import TopologyError
from asyncddp.topology.schedules import NeighborStep, static_schedule

__all__ = ["simulate_consensus", "run_consensus", "step_matrix", "consensus_states"]

ScheduleFactory = Callable[..., Iterator[NeighborStep]]


def _iterators(factory, n: int) -> list[Iterator[NeighborStep]]:
    if isinstance(factory, nx.DiGraph):
        if factory.number_of_nodes() != n:
            raise TopologyError(f"the graph has {factory.number_of_nodes()} nodes but n={n}")
        return [static_schedule(factory, r) for r in range(n)]
    return [factory(n, rank=r) for r in range(n)]


def _check_matching(steps: list[NeighborStep], index: int) -> None:
    n = len(steps)
    for j, step in enumerate(steps):
        for k in step.send_ranks:
            if not 0 <= k < n or j not in steps[k].recv_ranks:
                raise TopologyError(f"step {index}: rank {j} sends to {k}, which does not receive from it")
        for k in step.recv_ranks:
            if not 0 <= k < n or j not in steps[k].send_ranks:
                raise TopologyError(f"step {index}: rank {j} receives from {k}, which does not send to it")


def step_matrix(steps: list[NeighborStep], aux: bool = False) -> np.ndarray:
    """The n x n matrix ``M[i, j] = src_weights_i[j] * dst_weights_j[i]`` (+ self weights).

    With ``aux=False`` this is the mixing matrix of a plain step (``x <- M @ x``). With
    ``aux=True`` it holds the aux weights instead, without the diagonal self weights.
    """
    n = len(steps)
    matrix = np.zeros((n, n))
    for i, step in enumerate(steps):
        weights = step.aux_src_weights if aux else step.src_weights
        for j in step.recv_ranks:
            matrix[i, j] += weights.get(j, 0.0) * steps[j].dst_weights.get(i, 0.0)
        if not aux:
            matrix[i, i] += step.self_weight
    return matrix


def _advance(x: np.ndarray, aux: np.ndarray, steps: list[NeighborStep]) -> tuple[np.ndarray, np.ndarray]:
    send_aux = np.array([s.send_buffer == "aux" for s in steps])
    shape = (-1,) + (1,) * (x.ndim - 1)
    buf = np.where(send_aux.reshape(shape), aux, x)
    self_x = np.array([s.self_weight for s in steps]).reshape(shape)
    new_x = self_x * x + (step_matrix(steps) - np.diag(self_x.ravel())) @ buf
    if not any(s.has_aux for s in steps):
        return new_x, aux
    self_aux = np.array([1.0 if s.aux_self_weight is None else s.aux_self_weight for s in steps])
    return new_x, self_aux.reshape(shape) * aux + step_matrix(steps, aux=True) @ buf


def consensus_states(factory, n: int, steps: int, x0=None) -> Iterator[np.ndarray]:
    """Yield x before the first step and after each of ``steps`` steps (all ranks, numpy)."""
    x = np.eye(n) if x0 is None else np.array(x0, dtype=float)
    if x.shape[:1] != (n,):
        raise TopologyError(f"x0 must have one row per rank ({n}), got shape {x.shape}")
    if not isinstance(steps, int) or steps < 0:
        raise TopologyError(f"steps must be a non-negative integer, got {steps!r}")
    iterators = _iterators(factory, n)
    aux = np.zeros_like(x)
    yield x
    for index in range(steps):
        current = [next(it) for it in iterators]
        _check_matching(current, index)
        x, aux = _advance(x, aux, current)
        yield x


def run_consensus(factory, n: int, steps: int, x0=None) -> np.ndarray:
    """x after ``steps`` steps. With the default ``x0 = I`` this is the product of the step
    matrices (for plain schedules): row i says how much of each initial value rank i holds."""
    *_, last = consensus_states(factory, n, steps, x0)
    return last


def simulate_consensus(schedule_factory, n: int, steps: int, x0=None) -> np.ndarray:
    """Relative consensus error before and after each step: an array of ``steps + 1`` floats.

    ``schedule_factory(n, rank=r)`` gives rank r's schedule (a static ``nx.DiGraph`` also works).
    ``x0`` has one row per rank (default: the identity, so the error is that of the whole
    product matrix). Error k is ``||x_k - mean(x0)||_F / ||x0 - mean(x0)||_F``, measured against
    the average of the initial values (0 means exact averaging; the first entry is 1).
    """
    errors = []
    target = None
    scale = 1.0
    for x in consensus_states(schedule_factory, n, steps, x0):
        if target is None:
            target = x.mean(axis=0, keepdims=True)
            scale = float(np.linalg.norm(x - target)) or 1.0
        errors.append(float(np.linalg.norm(x - target)) / scale)
    return np.array(errors)
