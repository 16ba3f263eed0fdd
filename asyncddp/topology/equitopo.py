"""EquiTopo graphs (Song et al., NeurIPS 2022): random circulant topologies whose consensus rate
does not grow with n.

Basis for an offset ``u`` in ``1..n-1``: every node i sends to ``i + u`` (mod n) and keeps
``1/n`` of itself, giving ``(n-1)/n`` to what it receives from ``i - u``. (The paper writes the
basis as ``A[i, (i+u) mod n]``; drawing u uniformly, both directions give the same distribution.)

- D-/U-EquiStatic: the mean of ``degree`` basis matrices with i.i.d. uniform offsets (U-:
  each basis symmetrised, ``(A + A^T)/2``). ``degree`` ~ ln(n) gives an n-independent rate.
- OD-EquiDyn: one random offset per step, ``W = (1-eta) I + eta A``: one send per rank.
- OU-EquiDyn: one random offset u and start s per step; pairs ``(v, v+u)`` are matched greedily
  for v = s, s+1, ...; matched ranks swap, ``W = (1-eta) I + eta (I/n + (n-1)/n Match)``.

All ranks draw the same offsets from the shared ``seed``: never seed per rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import networkx as nx
import numpy as np

from asyncddp.errors import TopologyError
from asyncddp.topology.graphs import _check_rank, _check_size, graph_from_matrix
from asyncddp.topology.schedules import NeighborStep

__all__ = ["equi_static_graph", "equi_dyn_schedule", "equi_basis"]


def equi_basis(n: int, u: int) -> np.ndarray:
    """Mixing matrix of offset u: ``W[i, i] = 1/n``, ``W[i, (i-u) mod n] = (n-1)/n``."""
    _check_size(n)
    w = np.eye(n) / n
    w[np.arange(n), (np.arange(n) - u) % n] += (n - 1) / n
    return w


def equi_static_graph(
    n: int, degree: int | None = None, seed: int = 0, undirected: bool = False
) -> nx.DiGraph:
    """D-EquiStatic (``undirected=True``: U-EquiStatic) with ``degree`` random offsets.

    ``degree=None`` uses ``max(1, ceil(ln n))``. Out-degree is at most ``degree`` (twice that
    when undirected); repeated offsets add up their weight. Doubly stochastic.
    """
    _check_size(n)
    if degree is None:
        degree = max(1, math.ceil(math.log(n)))
    # More offsets than n only repeats them (and a huge count would allocate that many).
    if not isinstance(degree, (int, np.integer)) or isinstance(degree, bool) or not 1 <= degree <= max(n, 1):
        raise TopologyError(f"equi_static_graph: degree must be a whole number from 1 to n={n}, got {degree!r}")
    if n == 1:
        return graph_from_matrix([[1.0]])
    offsets = _rng(seed, "equi_static_graph").integers(1, n, size=int(degree))
    w = np.zeros((n, n))
    for u in offsets:
        basis = equi_basis(n, int(u))
        w += (basis + basis.T) / 2 if undirected else basis
    return graph_from_matrix(w / degree)


def _rng(seed, where: str) -> np.random.Generator:
    """The generator every rank draws the same offsets from; the seed must be a whole number >= 0."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise TopologyError(f"{where}: seed must be a whole number >= 0, got {seed!r}")
    return np.random.default_rng(seed)


def _check_eta(eta: float) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.floating)) or not 0.0 < float(eta) <= 1.0:
        raise TopologyError(f"equi_dyn_schedule: eta must be in (0, 1], got {eta!r}")
    return float(eta)


def _matching(n: int, u: int, start: int) -> list[int]:
    partner = list(range(n))
    matched = [False] * n
    for k in range(n):
        v = (start + k) % n
        w = (v + u) % n
        if v != w and not matched[v] and not matched[w]:
            partner[v], partner[w] = w, v
            matched[v] = matched[w] = True
    return partner


def equi_dyn_schedule(
    n: int, rank: int, eta: float = 0.5, seed: int = 0, undirected: bool = False
) -> Iterator[NeighborStep]:
    """OD-EquiDyn (``undirected=True``: OU-EquiDyn) one-peer steps for ``rank``.

    Expected squared-error contraction per step (OD) is ``a^2 + b^2 - 2ab/(n-1)`` with
    ``a = 1 - eta + eta/n`` and ``b = eta (n-1)/n``: about ``1 - 2 eta (1 - eta)``, whatever n.
    Every rank must use the same ``seed``.
    """
    _check_size(n)
    _check_rank(n, rank, "equi_dyn_schedule")
    return _equi_dyn_steps(n, rank, _check_eta(eta), _rng(seed, "equi_dyn_schedule"), undirected)


def _equi_dyn_steps(n: int, rank: int, eta: float, rng, undirected: bool) -> Iterator[NeighborStep]:
    # A separate generator so that bad arguments raise at the call, not at the first next().
    self_weight, peer_weight = 1.0 - eta + eta / n, eta * (n - 1) / n
    while True:
        if n == 1:
            yield NeighborStep((), (), 1.0, {}, {})
            continue
        u = int(rng.integers(1, n))
        if not undirected:
            send, recv = (rank + u) % n, (rank - u) % n
            yield NeighborStep((send,), (recv,), self_weight, {recv: peer_weight}, {send: 1.0})
            continue
        peer = _matching(n, u, int(rng.integers(0, n)))[rank]
        if peer == rank:
            yield NeighborStep((), (), 1.0, {}, {})
        else:
            yield NeighborStep((peer,), (peer,), self_weight, {peer: peer_weight}, {peer: 1.0})
