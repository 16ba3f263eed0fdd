"""Neighbour averaging over the virtual topology: ``neighbor_allreduce`` and its variants.

Semantics follow BlueFog (see docs of ``neighbor_allreduce``): the sender scales by its dst weight
before sending, the receiver combines ``self_weight * x + sum_j src_weights[j] * received_j``.
Without weights the result is the topology's weighted average, or for an unweighted topology the
uniform average computed as ``(x + sum_j x_j) / (in_degree + 1)`` — sum first, then divide.
Integer tensors: uniform averages are summed exactly in int64 and divided rounding toward zero
(BlueFog's integer division); weighted combinations are computed in float64 and rounded to the
nearest integer (truncating would turn 14/3 + 7/3 = 6.999... into 6). float16/bfloat16 are
combined in float32. A one-neighbour step whose two weights sum to 1 (every one-peer Exp-2
step) is computed as ``x + w·(r − x)`` (``torch.lerp``, one pass over memory instead of two), which
may differ from ``self_weight·x + w·r`` in the last bit. Results never alias the input unless an in-place ``*_`` variant was used.
The input must not be modified until a nonblocking op's handle has been synchronized.
"""

from __future__ import annotations

import numpy as np
import torch

from asyncddp.comm import p2p
from asyncddp.comm.buffers import check_dtype, host_empty, is_direct_cpu, reduction_dtype
from asyncddp.comm.engine import NOT_INLINE, Op, get_engine, live_engine
from asyncddp.comm.neighbor_plan import Plan, check_pattern, make_plan
from asyncddp.errors import CommError

__all__ = [
    "neighbor_allreduce",
    "neighbor_allreduce_",
    "neighbor_allreduce_nonblocking",
    "neighbor_allreduce_nonblocking_",
    "check_averagable",
    "run_neighbor_allreduce",
]




def _compute_dtype(dtype: torch.dtype, uniform: bool) -> torch.dtype:
    if dtype.is_floating_point:
        return reduction_dtype(dtype)
    return torch.int64 if uniform else torch.float64


def _scaled(x: torch.Tensor, weight: float) -> torch.Tensor:
    if weight == 1.0:
        return x
    work = x.to(_compute_dtype(x.dtype, False)) * weight
    return (work if x.dtype.is_floating_point else work.round()).to(x.dtype)


def _divide_(x, count: int):
    """``x /= count`` in place (a tensor, or a numpy array: cheaper to call on small data); for a
    power of two as ``x *= 1/count``, the same correctly rounded result (only the exponent
    changes) in ~25% less time than a division."""
    if isinstance(x, np.ndarray):
        if count & (count - 1) == 0:
            return np.multiply(x, 1.0 / count, out=x)
        return np.divide(x, count, out=x)
    if count & (count - 1) == 0:
        return x.mul_(1.0 / count)
    return x.div_(count)


def _lerp_weight(plan: Plan):
    """``w`` when the step is ``(1 - w)·x + w·r`` with one in-neighbour (one-peer Exp-2 steps
    are), else None. ``lerp`` computes it as ``x + w·(r − x)`` in one pass over memory instead
    of scale-then-add's two: the step is memory-bound, so it takes ~30% less time; the result
    may differ from ``self_weight·x + w·r`` in the last bit, never by more."""
    if plan.uniform or len(plan.recvs) != 1:
        return None
    weight = plan.recvs[0][1]
    return weight if plan.self_weight + weight == 1.0 else None


def combine(x: torch.Tensor, received: dict, plan: Plan) -> torch.Tensor:
    """The rank's new value from its own tensor and what its in-neighbours sent.

    One pass over memory per term (in-place adds with ``alpha``): on a busy machine the
    arithmetic, not the transfer, is what a neighbour step would otherwise spend its time on.
    """
    work_dtype = _compute_dtype(x.dtype, plan.uniform)

    def work(t: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == work_dtype else t.to(work_dtype)

    if plan.uniform:
        acc = x.to(work_dtype, copy=True)
        for src, _ in plan.recvs:
            acc.add_(work(received[src]))
        count = len(plan.recvs) + 1
        if work_dtype.is_floating_point:
            _divide_(acc, count)
        else:
            acc = torch.div(acc, count, rounding_mode="trunc")
        return acc.to(x.dtype)
    lerp = _lerp_weight(plan)
    if lerp is not None and x.dtype.is_floating_point and work_dtype == x.dtype:
        return torch.lerp(x, received[plan.recvs[0][0]], lerp)
    acc = torch.mul(work(x), plan.self_weight)
    for src, weight in plan.recvs:
        acc.add_(work(received[src]), alpha=weight)
    if not x.dtype.is_floating_point:
        acc = acc.round_()  # 14/3 + 7/3 is 6.999... in float64: truncating would give 6, not 7
    return acc.to(x.dtype)


def run_neighbor_allreduce(engine, comm, x: torch.Tensor, plan: Plan, in_place=False) -> torch.Tensor:
    """One neighbour-averaging step of a contiguous tensor (called on the comm thread).

    ``in_place``: write the result into ``x`` itself when its dtype allows exact same-dtype
    arithmetic (float32/float64), saving an allocation and a copy; otherwise a new tensor.
    """
    if plan.check:
        check_pattern(engine, comm, [d for d, _ in plan.sends], [s for s, _ in plan.recvs])
    sends = {dst: _scaled(x, w) for dst, w in plan.sends}
    specs = {src: (x.shape, x.dtype) for src, _ in plan.recvs}
    received = p2p.exchange(engine, comm, sends, specs, x)
    # Every send has completed here, so x may now be overwritten.
    if in_place and x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
        if plan.uniform:
            for src, _ in plan.recvs:
                x.add_(received[src])
            return _divide_(x, len(plan.recvs) + 1)
        lerp = _lerp_weight(plan)
        if lerp is not None:
            return x.lerp_(received[plan.recvs[0][0]], lerp)
        x.mul_(plan.self_weight)
        for src, weight in plan.recvs:
            x.add_(received[src], alpha=weight)
        return x
    return combine(x, received, plan)


def _run_batch(engine, batch: list[Op]) -> list:
    plan = batch[0].args["plan"]
    tensors = [op.args["x"] for op in batch]
    target = batch[0].args["inplace"]
    if len(tensors) == 1 and target is not None and target.data_ptr() == tensors[0].data_ptr():
        # In-place on a contiguous tensor: combine straight into the caller's memory (other
        # dtypes than float32/float64 get a new tensor back, copied in).
        result = run_neighbor_allreduce(engine, engine.world, target, plan, in_place=True)
        if result is not target:
            target.copy_(result)
        return [target]
    if len(tensors) == 1:
        results = [run_neighbor_allreduce(engine, engine.world, tensors[0], plan)]
    else:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        fused = run_neighbor_allreduce(engine, engine.world, flat, plan)
        results = [
            piece.view(t.shape) for piece, t in zip(fused.split([t.numel() for t in tensors]), tensors)
        ]
    out = []
    for op, result in zip(batch, results):
        target = op.args["inplace"]
        if target is not None:
            target.copy_(result)
            result = target
        out.append(result)
    return out


# The lean blocking path: CPU dtypes numpy can view (the exchange moves the tensor's own bytes).
_LEAN_DTYPES = frozenset((
    torch.float32, torch.float64, torch.float16,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
))  # fmt: skip
_SAME_DTYPE_MATH = (torch.float32, torch.float64)  # combined in place, no work copy


def _lean_buffer(nbytes: int):
    buf = host_empty((nbytes,), torch.uint8)
    return buf, buf.numpy()


def _exchange_small(engine, comm, x: torch.Tensor, plan: Plan) -> dict:
    """``p2p.exchange`` for a CPU tensor that fits one chunk, with nothing it does not need.

    The same messages as ``p2p.exchange`` (one per peer, bytes, the dtype/shape tag), so a peer
    on the general path matches them. Returns ``[(uint8 tensor, its numpy view)]`` in
    ``plan.recvs`` order: reused receive buffers, valid until the next exchange.
    """
    from mpi4py import MPI

    nbytes = x.nbytes
    requests, bufs = [], []
    for index, (src, _) in enumerate(plan.recvs):
        buf, view = engine.scratch(("lean", index, nbytes), lambda: _lean_buffer(nbytes))
        bufs.append((buf, view))
        requests.append(comm.Irecv([view, MPI.BYTE], src, MPI.ANY_TAG))
    num_recvs = len(requests)
    tag = p2p.spec_tag(x.shape, x.dtype)
    keep_alive = []
    for dst, weight in plan.sends:
        sent = x if weight == 1.0 else _scaled(x, weight)
        keep_alive.append(sent)
        requests.append(comm.Isend([sent.numpy(), MPI.BYTE], dst, tag))
    engine.count_messages(len(requests) - num_recvs)
    statuses = p2p.wait_all(requests)
    p2p.check_received(statuses.failure, [(src, nbytes, tag) for src, _ in plan.recvs], statuses[:num_recvs])
    return bufs


def _run_lean(engine, x: torch.Tensor, plan: Plan, in_place: bool) -> torch.Tensor:
    """A blocking neighbour step on the caller's thread (``engine.run_inline`` claimed it)."""
    comm = engine.world
    if x.nbytes > engine.chunk:  # chunked messages: the general exchange, same combine
        result = run_neighbor_allreduce(engine, comm, x, plan, in_place=in_place)
        return _finish_in_place(x, result) if in_place else result
    if plan.check:
        check_pattern(engine, comm, [d for d, _ in plan.sends], [s for s, _ in plan.recvs])
    bufs = _exchange_small(engine, comm, x, plan)
    # Every send has completed here, so x may now be overwritten.
    if in_place and x.dtype in _SAME_DTYPE_MATH:
        # numpy ufuncs give bit-for-bit the results of the torch ops of the general path
        # (IEEE add/multiply/divide in the tensor's dtype) at a third of the call cost.
        mine = x.numpy()
        if plan.uniform:
            for (buf, view) in bufs:
                np.add(mine, view.view(mine.dtype).reshape(mine.shape), out=mine)
            _divide_(mine, len(bufs) + 1)
            return x
        lerp = _lerp_weight(plan)
        if lerp is not None:
            return x.lerp_(bufs[0][0].view(x.dtype).view(x.shape), lerp)
        np.multiply(mine, plan.self_weight, out=mine)
        for (_, weight), (buf, _) in zip(plan.recvs, bufs):
            x.add_(buf.view(x.dtype).view(x.shape), alpha=weight)
        return x
    received = {src: buf.view(x.dtype).view(x.shape) for (src, _), (buf, _) in zip(plan.recvs, bufs)}
    result = combine(x, received, plan)
    return _finish_in_place(x, result) if in_place else result


def _finish_in_place(x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    if result is not x:
        x.copy_(result)
    return x


def _world_plan(engine, self_weight, src_weights, dst_weights, check) -> Plan:
    ctx = engine.ctx
    return make_plan(ctx.topology, ctx.is_weighted, engine.rank, engine.size,
                     self_weight, src_weights, dst_weights, bool(check))  # fmt: skip


def _blocking(tensor, self_weight, src_weights, dst_weights, name, enable_topo_check, inplace):
    if is_direct_cpu(tensor, _LEAN_DTYPES):
        engine = live_engine()
        plan = _world_plan(engine, self_weight, src_weights, dst_weights, enable_topo_check)
        done = engine.run_inline(_run_lean, tensor, plan, inplace)
        if done is not NOT_INLINE:
            return done
    return _submit(tensor, self_weight, src_weights, dst_weights, name, enable_topo_check, inplace, True)


def check_averagable(tensor, op: str) -> None:
    """The tensor checks every averaging op makes before anything is sent."""
    if not isinstance(tensor, torch.Tensor):
        raise CommError(f"{op} expects a torch.Tensor, got {type(tensor).__name__}")
    check_dtype(tensor, op)
    if tensor.dtype == torch.bool:
        raise CommError(f"{op} cannot average bool tensors; convert to a number type")


def _submit(tensor, self_weight, src_weights, dst_weights, name, enable_topo_check, inplace, blocking=False):
    check_averagable(tensor, "neighbor_allreduce")
    engine = get_engine()
    plan = _world_plan(engine, self_weight, src_weights, dst_weights, enable_topo_check)
    x = tensor.detach()
    x = x if x.is_contiguous() else x.contiguous()
    nbytes = x.numel() * x.element_size()
    op = Op(
        kind="neighbor_allreduce",
        name=name or "neighbor_allreduce",
        run=_run_batch,
        args={"x": x, "plan": plan, "inplace": tensor if inplace else None},
        nbytes=nbytes,
        fuse_key=("neighbor_allreduce", x.dtype, x.device, plan),
        peers=tuple(sorted({d for d, _ in plan.sends} | {s for s, _ in plan.recvs})),
    )
    return engine.execute(op) if blocking else engine.submit(op)


def neighbor_allreduce_nonblocking(
    tensor, *, self_weight=None, src_weights=None, dst_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """Start ``neighbor_allreduce``; returns a handle for ``synchronize``/``poll``."""
    return _submit(tensor, self_weight, src_weights, dst_weights, name, enable_topo_check, False)


def neighbor_allreduce_nonblocking_(
    tensor, *, self_weight=None, src_weights=None, dst_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """In-place ``neighbor_allreduce_nonblocking``: the result is written into ``tensor``."""
    return _submit(tensor, self_weight, src_weights, dst_weights, name, enable_topo_check, True)


def neighbor_allreduce(
    tensor, *, self_weight=None, src_weights=None, dst_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """Weighted average of this rank's tensor and its in-neighbours' tensors.

    ``out_i = self_weight·x_i + Σ_{j∈src_weights} src_weights[j]·(dst_w_{j→i}·x_j)``. With no
    weights, the topology's weights (uniform ``(x + Σ x_j)/(indeg + 1)`` when unweighted).
    ``self_weight`` and ``src_weights`` come together; ``dst_weights`` (dict, or list meaning
    weight 1) makes it a dynamic step sending only there — ``**step.as_kwargs()`` of a
    ``NeighborStep``. With ``enable_topo_check`` (default) a dynamic step whose sends and
    receives do not match across ranks raises ``CommError`` on every rank instead of hanging.
    """
    return _blocking(tensor, self_weight, src_weights, dst_weights, name, enable_topo_check, False)


def neighbor_allreduce_(
    tensor, *, self_weight=None, src_weights=None, dst_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """In-place ``neighbor_allreduce``; returns ``tensor``."""
    return _blocking(tensor, self_weight, src_weights, dst_weights, name, enable_topo_check, True)
