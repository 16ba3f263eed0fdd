"""Who talks to whom in one gossip round of the compressed optimizers, and with which weights.

The same rules as ``neighbor_allreduce``: the topology's weights (the plain average when it is
unweighted), the settable ``self_weight``/``src_weights``/``dst_weights``, or the next step of a
dynamic schedule; resolved by the comm core's ``make_plan``. The compressed optimizers send
payloads, not scaled tensors, so destination weights other than 1 are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncddp.comm.context import get_context, rank, size
from asyncddp.comm.neighbor_plan import make_plan
from asyncddp.errors import OptimizerError

__all__ = ["GossipRound", "next_round"]


@dataclass(frozen=True)
class GossipRound:
    dsts: tuple
    recvs: tuple  # ((src, weight), ...)
    check: bool


def next_round(schedule, self_weight, src_weights, dst_weights, check: bool, who: str) -> GossipRound:
    """This round's peers: the schedule's next step when there is one, else the weights set."""
    if schedule is not None:
        step = next(schedule)
        if getattr(step, "has_aux", False):
            raise OptimizerError(f"{who}: this schedule keeps an auxiliary buffer per rank (CECA); use "
                                 "one_peer_exponential_two or equi_dyn_schedule")
        self_weight, src_weights, dst_weights = step.self_weight, dict(step.src_weights), dict(step.dst_weights)
    ctx = get_context()
    plan = make_plan(ctx.topology, ctx.is_weighted, rank(), size(), self_weight, src_weights, dst_weights, check)
    if any(w != 1.0 for _, w in plan.sends):
        raise OptimizerError(f"{who}: dst_weights other than 1 cannot scale a compressed payload; "
                             "put the weights on the receiving side (src_weights)")
    recvs = plan.recvs
    if plan.uniform:
        recvs = tuple((s, 1.0 / (len(plan.recvs) + 1)) for s, _ in plan.recvs)
    return GossipRound(tuple(d for d, _ in plan.sends), recvs, plan.check)
