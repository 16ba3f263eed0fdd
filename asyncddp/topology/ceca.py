"""DSGD-CECA (Ding et al., ICML 2023): one send and one receive per step, exact average after
``tau = ceil(log2 n)`` steps for EVERY n, not only powers of two.

Each rank keeps its value ``x`` and an auxiliary buffer ``aux``. Write ``n - 1`` in binary with
``tau`` digits ``b[0..tau-1]`` (most significant first) and start with ``n_ex = 0``. Round r with
digit ``d = b[r]`` (``c`` is what rank i receives)::

    d = 1: send x to i+n_ex+1, c = x from i-n_ex-1;  x <- x/2 + c/2
           aux <- (n_ex*aux + (n_ex+1)*c) / (2*n_ex+1)
    d = 0: send aux to i+n_ex, c = aux from i-n_ex;  x <- ((n_ex+1)*x + n_ex*c) / (2*n_ex+1)
           aux <- aux/2 + c/2
    then n_ex <- 2*n_ex + d

Invariant: x is the average of the n_ex+1 original values ending at i (``i-n_ex..i``), aux the
average of the n_ex before i. After tau rounds n_ex = n - 1, so x is the global average; the
schedule then starts over (the first round overwrites aux, so nothing stale survives).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from asyncddp.topology.graphs import _check_rank, _check_size
from asyncddp.topology.schedules import NeighborStep, exp2_period

__all__ = ["ceca_digits", "ceca_schedule", "ceca_exact_average"]


def ceca_digits(n: int) -> list[int]:
    """The binary digits of ``n - 1``, most significant first, ``ceil(log2 n)`` of them."""
    _check_size(n)
    tau = exp2_period(n)
    return [((n - 1) >> (tau - 1 - r)) & 1 for r in range(tau)]


def _round(n: int, rank: int, n_ex: int, digit: int) -> NeighborStep:
    denominator = 2 * n_ex + 1
    if digit:
        dist = n_ex + 1
        send, recv = (rank + dist) % n, (rank - dist) % n
        return NeighborStep(
            (send,), (recv,), 0.5, {recv: 0.5}, {send: 1.0},
            send_buffer="x", aux_self_weight=n_ex / denominator,
            aux_src_weights={recv: (n_ex + 1) / denominator},
        )
    send, recv = (rank + n_ex) % n, (rank - n_ex) % n
    return NeighborStep(
        (send,), (recv,), (n_ex + 1) / denominator, {recv: n_ex / denominator}, {send: 1.0},
        send_buffer="aux", aux_self_weight=0.5, aux_src_weights={recv: 0.5},
    )


def ceca_schedule(n: int, rank: int) -> Iterator[NeighborStep]:
    """Rank ``rank``'s CECA steps, repeating every ``ceil(log2 n)`` steps (see module doc).

    Steps carry an auxiliary buffer (``step.has_aux``); ``NeighborStep`` says how to drive them.
    For n = 1 every step is idle.
    """
    _check_size(n)
    _check_rank(n, rank, "ceca_schedule")
    digits = ceca_digits(n)
    if not digits:
        return itertools.repeat(NeighborStep((), (), 1.0, {}, {}, "x", 1.0, {}))
    steps, n_ex = [], 0
    for digit in digits:
        steps.append(_round(n, rank, n_ex, digit))
        n_ex = 2 * n_ex + digit
    return itertools.cycle(steps)


def ceca_exact_average(x0) -> tuple[np.ndarray, list[int]]:
    """Run the CECA recursion on ``x0`` (one row per rank) in numpy, straight from the paper.

    Returns the final x (every row equals the average of ``x0``'s rows up to rounding) and the
    ``n_ex`` after each round. Independent of ``ceca_schedule``, so each checks the other.
    """
    x = np.array(x0, dtype=float)
    n = x.shape[0]
    aux = np.zeros_like(x)
    n_ex, history = 0, []
    for digit in ceca_digits(n):
        if digit:
            c = np.roll(x, n_ex + 1, axis=0)  # row i gets x[i - n_ex - 1]
            x, aux = (x + c) / 2, (n_ex * aux + (n_ex + 1) * c) / (2 * n_ex + 1)
        else:
            c = np.roll(aux, n_ex, axis=0)  # row i gets aux[i - n_ex]
            x, aux = ((n_ex + 1) * x + n_ex * c) / (2 * n_ex + 1), (aux + c) / 2
        n_ex = 2 * n_ex + digit
        history.append(n_ex)
    return x, history
