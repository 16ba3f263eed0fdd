"""Neighbour averaging over the virtual topology: ``neighbor_allreduce`` and its variants.

Semantics follow BlueFog (see docs of ``neighbor_allreduce``): the sender scales by its dst weight
before sending, the receiver combines ``self_weight * x + sum_j src_weights[j] * received_j``.
Without weights the result is the topology's weighted average, or for an unweighted topology the
plain average ``(x + sum_j x_j) / (in_degree + 1)``. The arithmetic and its rounding (integers:
nearest, ties to even) are ``asyncddp.comm.averaging``'s; this module moves the buffers. A
CPU tensor that fits one message chunk is exchanged with ``p2p.exchange_one_chunk`` (the cheap
path small tensors need), anything else with ``p2p.exchange``; both feed the same ``combine``.
Results never alias the input unless an in-place ``*_`` variant was used. The input must not be
modified until a nonblocking op's handle has been synchronized.
"""

from __future__ import annotations

import torch

from asyncddp import exported_by
from asyncddp.comm import p2p
from asyncddp.comm.averaging import combine, scaled
from asyncddp.comm.buffers import check_dtype, plain
from asyncddp.comm.engine import Op, live_engine
from asyncddp.comm.neighbor_plan import Plan, check_pattern, make_plan
from asyncddp.errors import CommError

__all__ = [*exported_by(__name__), "check_averagable", "run_neighbor_allreduce"]


def run_neighbor_allreduce(engine, comm, x: torch.Tensor, plan: Plan, out=None) -> torch.Tensor:
    """One neighbour-averaging step of a contiguous tensor, on ``comm``.

    ``out``: where to write the result (may be ``x``: it is overwritten only after every send
    has completed); a new tensor when None.
    """
    if plan.check:
        check_pattern(engine, comm, [d for d, _ in plan.sends], [s for s, _ in plan.recvs])
    sends = {dst: scaled(x, w) for dst, w in plan.sends}
    srcs, arrays = plan.srcs, None
    if x.is_cpu and x.nbytes <= engine.chunk:
        received, arrays = p2p.exchange_one_chunk(engine, comm, sends, x, srcs)
    else:
        by_src = p2p.exchange(engine, comm, sends, {s: (x.shape, x.dtype) for s in srcs}, x)
        received = [by_src[s] for s in srcs]
    return combine(x, received, plan.self_weight, plan.weights, uniform=plan.uniform, out=out, arrays=arrays)


def _into(target, result: torch.Tensor) -> torch.Tensor:
    """``result``, copied into ``target`` (returned) for an in-place op."""
    if target is None or result is target:
        return result
    return target.copy_(result)


def _run_batch(engine, batch: list[Op]) -> list:
    plan = batch[0].args["plan"]
    if len(batch) == 1:
        x, target = batch[0].args["x"], batch[0].args["inplace"]
        # In place on a contiguous tensor: combine straight into the caller's memory.
        direct = target is not None and (x is target or x.data_ptr() == target.data_ptr())
        result = run_neighbor_allreduce(engine, engine.world, x, plan, out=x if direct else None)
        return [target if direct else _into(target, result)]
    tensors = [op.args["x"] for op in batch]
    fused = run_neighbor_allreduce(engine, engine.world, torch.cat([t.reshape(-1) for t in tensors]), plan)
    pieces = fused.split([t.numel() for t in tensors])
    return [_into(op.args["inplace"], piece.view(t.shape)) for op, piece, t in zip(batch, pieces, tensors)]


def check_averagable(tensor, op: str) -> None:
    """The tensor checks every averaging op makes before anything is sent."""
    if not isinstance(tensor, torch.Tensor):
        raise CommError(f"{op} expects a torch.Tensor, got {type(tensor).__name__}")
    check_dtype(tensor, op)
    if tensor.dtype == torch.bool:
        raise CommError(f"{op} cannot average bool tensors; convert to a number type")


def _neighbor_allreduce(tensor, *, inplace: bool, blocking: bool, self_weight=None, src_weights=None,
                        dst_weights=None, name=None, enable_topo_check=True):  # fmt: skip
    """The one implementation behind the four public variants."""
    check_averagable(tensor, "neighbor_allreduce")
    engine = live_engine()
    ctx = engine.ctx
    plan = make_plan(ctx.topology, ctx.is_weighted, engine.rank, engine.size,
                     self_weight, src_weights, dst_weights, bool(enable_topo_check))  # fmt: skip
    x = plain(tensor)
    op = Op(
        kind="neighbor_allreduce",
        name=name or "neighbor_allreduce",
        run=_run_batch,
        args={"x": x, "plan": plan, "inplace": tensor if inplace else None},
        nbytes=x.nbytes,
        fuse_key=None if blocking else ("neighbor_allreduce", x.dtype, x.device, plan),
        peers=plan.peers,
    )
    return engine.call(op, blocking)


def neighbor_allreduce(tensor, **options):
    """Weighted average of this rank's tensor and its in-neighbours' tensors (a new tensor).

    ``out_i = self_weight·x_i + Σ_{j∈src_weights} src_weights[j]·(dst_w_{j→i}·x_j)``. Keywords:
    ``self_weight`` and ``src_weights`` (``{rank: weight}``) come together; with neither, the
    topology's weights (the plain average ``(x + Σ x_j)/(indeg + 1)`` when unweighted).
    ``dst_weights`` (dict, or list meaning weight 1) makes it a dynamic step sending only there —
    ``**step.as_kwargs()`` of a ``NeighborStep``. ``name`` labels the op on the timeline. With
    ``enable_topo_check`` (default True) a dynamic step whose sends and receives do not match
    across ranks raises ``CommError`` on every rank instead of hanging.
    """
    return _neighbor_allreduce(tensor, **options, inplace=False, blocking=True)


def neighbor_allreduce_(tensor, **options):
    """In-place ``neighbor_allreduce`` (same keywords); returns ``tensor``."""
    return _neighbor_allreduce(tensor, **options, inplace=True, blocking=True)


def neighbor_allreduce_nonblocking(tensor, **options):
    """Start ``neighbor_allreduce`` (same keywords); returns a handle for ``synchronize``/``poll``."""
    return _neighbor_allreduce(tensor, **options, inplace=False, blocking=False)


def neighbor_allreduce_nonblocking_(tensor, **options):
    """In-place ``neighbor_allreduce_nonblocking``: the result is written into ``tensor``."""
    return _neighbor_allreduce(tensor, **options, inplace=True, blocking=False)
