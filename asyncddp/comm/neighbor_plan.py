"""Who sends to whom, with which weights: ``neighbor_allreduce``'s arguments resolved into a ``Plan``.

A static topology's plan is worked out once per graph object; a dynamic step's (``dst_weights``
given) is cached by its exact arguments, since a schedule's steps repeat. ``check_pattern`` lets
every rank see every rank's sends and receives, so a step whose sends and receives do not match
raises ``CommError`` on every rank instead of hanging.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from asyncddp.comm.traffic import allgather_bytes
from asyncddp.errors import CommError
from asyncddp.topology.analysis import recv_weights

__all__ = ["Plan", "make_plan", "check_pattern", "check_ranks", "as_rank"]


@dataclass(frozen=True)
class Plan:
    """Who this rank sends to and receives from in one step, and with which weights."""

    sends: tuple  # ((dst, weight), ...)
    recvs: tuple  # ((src, weight), ...); weights unused when uniform
    self_weight: float
    uniform: bool
    check: bool  # verify that every rank's sends match its peers' receives

    @cached_property
    def srcs(self) -> list:
        return [s for s, _ in self.recvs]

    @cached_property
    def weights(self) -> list:
        return [w for _, w in self.recvs]

    @cached_property
    def peers(self) -> tuple:
        """Every rank this step talks to, ascending (what the timeline records)."""
        return tuple(sorted({d for d, _ in self.sends} | {s for s, _ in self.recvs}))


def as_rank(value, num_ranks: int, what: str) -> int:
    """``value`` as a plain ``int`` rank of a job of ``num_ranks``, or ``CommError``.

    Any integral value is a rank (``operator.index``: ``int``, ``numpy.int64`` from a
    ``numpy.random.permutation``, a 0-d integer tensor); floats and bools are refused, since
    ``1.0`` or ``True`` as a rank is almost always a mistaken argument.
    """
    if isinstance(value, (bool, np.bool_)):
        rank = None
    else:
        try:
            rank = operator.index(value)
        except TypeError:
            rank = None
    if rank is None or not 0 <= rank < num_ranks:
        raise CommError(f"{what}={value!r} is not a rank of the job (an integer in 0..{num_ranks - 1})")
    return rank


def check_ranks(ranks, num_ranks: int, me: int, what: str) -> list[int]:
    """``ranks`` as plain ints (see ``as_rank``), none of them ``me``."""
    out = []
    for r in ranks:
        try:
            rank = as_rank(r, num_ranks, what)
        except CommError:
            raise CommError(f"{what}: rank {r!r} is not in the job of {num_ranks} ranks "
                            f"(an integer in 0..{num_ranks - 1})") from None
        if rank == me:
            raise CommError(f"{what}: rank {rank} is this rank; give its weight as self_weight")
        out.append(rank)
    return out


def _as_weights(value, what: str) -> dict:
    if isinstance(value, dict):
        return {k: float(w) for k, w in value.items()}
    if isinstance(value, (list, tuple, set)):
        return {k: 1.0 for k in value}
    raise CommError(f"{what} must be a dict {{rank: weight}} or a list of ranks, got {value!r}")


def _checked(weights: dict, num_ranks: int, me: int, what: str) -> dict:
    """``{rank: weight}`` with every key checked and made a plain int."""
    ranks = check_ranks(weights, num_ranks, me, what)
    return dict(zip(ranks, weights.values()))


_static_plans: dict = {}
_dynamic_plans: dict = {}  # (me, n, self_weight, src items, dst items, check) -> Plan
_MAX_DYNAMIC_PLANS = 1024  # a schedule cycles through a few steps; arbitrary ones are just rebuilt


def _frozen(weights):
    """A hashable, type-exact image of a weights argument, or None when it cannot be cached.

    Only plain ``int`` rank keys qualify: ``True`` hashes like ``1`` but must still be refused
    by the full checks, so it never hits a plan cached for ``1`` (other integral keys, such as
    ``numpy.int64``, are accepted by those checks but simply not cached).
    """
    kind = type(weights)
    if kind is dict:
        items = tuple(weights.items())
        for rank, _ in items:
            if type(rank) is not int:
                return None
        return items
    if kind is list or kind is tuple:
        for rank in weights:
            if type(rank) is not int:
                return None
        return (kind, tuple(weights))
    return None


def make_plan(graph, is_weighted, me, num_ranks, self_weight, src_weights, dst_weights, check):
    """Resolve the keyword arguments of ``neighbor_allreduce`` against a topology.

    Dynamic steps (``dst_weights`` given) do not depend on the topology, so their plans are
    cached by the exact arguments: a schedule's steps repeat, and each repeat skips the checks
    and the sorting it passed the first time.
    """
    if dst_weights is not None and self_weight is not None and src_weights is not None:
        src_key, dst_key = _frozen(src_weights), _frozen(dst_weights)
        if src_key is not None and dst_key is not None:
            try:
                key = (me, num_ranks, self_weight, src_key, dst_key, check)
                plan = _dynamic_plans.get(key)
            except TypeError:  # unhashable weight values: resolved (and refused) below
                key, plan = None, None
            if plan is not None:
                return plan
            plan = _make_plan(graph, is_weighted, me, num_ranks, self_weight, src_weights, dst_weights, check)
            if key is not None:
                if len(_dynamic_plans) >= _MAX_DYNAMIC_PLANS:
                    _dynamic_plans.clear()
                _dynamic_plans[key] = plan
            return plan
    return _make_plan(graph, is_weighted, me, num_ranks, self_weight, src_weights, dst_weights, check)


def _make_plan(graph, is_weighted, me, num_ranks, self_weight, src_weights, dst_weights, check):
    if (self_weight is None) != (src_weights is None):
        raise CommError(
            "neighbor_allreduce: self_weight and src_weights must be given together "
            "(or neither, to use the topology's weights)"
        )
    if dst_weights is not None:
        if self_weight is None:
            raise CommError(
                "neighbor_allreduce: dst_weights (a dynamic step) needs self_weight and "
                "src_weights too, e.g. neighbor_allreduce(x, **step.as_kwargs())"
            )
        dst = _checked(_as_weights(dst_weights, "dst_weights"), num_ranks, me, "dst_weights")
        src = _checked(_as_weights(src_weights, "src_weights"), num_ranks, me, "src_weights")
        return Plan(
            tuple(sorted(dst.items())), tuple(sorted(src.items())), float(self_weight), False, check
        )
    if self_weight is None:
        cached = _static_plans.get((me, bool(is_weighted)))
        if cached is not None and cached[0] is graph:
            return cached[1]
    # Per-op path (dynamic steps rebuild the plan every call): the topology was validated by
    # set_topology, so list neighbours directly instead of re-validating the whole graph.
    ins = sorted(j for j in graph.predecessors(me) if j != me)
    outs = sorted(j for j in graph.successors(me) if j != me)
    sends = tuple((j, 1.0) for j in outs)
    if self_weight is not None:
        src = _checked(_as_weights(src_weights, "src_weights"), num_ranks, me, "src_weights")
        strangers = sorted(set(src) - set(ins))
        if strangers:
            raise CommError(
                f"src_weights names rank(s) {strangers} that are not in-neighbours of rank {me} "
                f"in the current topology (in-neighbours: {ins}); pass dst_weights for a dynamic step"
            )
        recvs = tuple((j, src.get(j, 0.0)) for j in ins)
        return Plan(sends, recvs, float(self_weight), False, False)
    if is_weighted:
        own, weights = recv_weights(graph, me)
        plan = Plan(sends, tuple(weights.items()), own, False, False)
    else:
        plan = Plan(sends, tuple((j, 1.0) for j in ins), 1.0, True, False)
    # The topology's own plan is worked out once per graph object (set_topology swaps objects;
    # the graph is kept referenced so its id cannot be reused while cached).
    _static_plans[(me, bool(is_weighted))] = (graph, plan)
    return plan


def check_pattern(engine, comm, sends, recvs) -> None:
    """Every rank learns everyone's send/receive sets; any mismatch raises CommError everywhere.

    One Allgather of 2·n bytes per rank: cheap next to the exchange, and it turns "A sends to B
    but B does not expect A" into an error on every rank instead of a hang.
    """
    n, me = comm.Get_size(), comm.Get_rank()
    mine = np.zeros(2 * n, dtype=np.uint8)
    mine[[d for d in sends]] = 1
    mine[[n + s for s in recvs]] = 1
    table = np.empty((n, 2 * n), dtype=np.uint8)
    comm.Allgather(mine, table)
    engine.count_overhead("pattern_check", 1, allgather_bytes(mine.nbytes, n))
    sends_to, expects = table[:, :n], table[:, n:]
    if not (sends_to != expects.T).any():  # the common case, without a Python loop over n² pairs
        return
    bad = [(int(j), int(i)) for j, i in np.argwhere(sends_to != expects.T)]
    if bad:
        shown = ", ".join(
            f"{j}->{i} ({'sent but not expected' if sends_to[j, i] else 'expected but not sent'})"
            for j, i in bad[:6]
        )
        involved = sorted({r for pair in bad for r in pair})
        where = "this rank is involved" if me in involved else f"ranks involved: {involved}"
        raise CommError(
            f"neighbor_allreduce: send/receive pattern does not match: {shown} ({where}); every "
            "dst_weights entry j->i needs i to list j in src_weights"
        )
