"""``neighbor_allgather``: the in-neighbours' tensors concatenated, on the virtual topology."""

from __future__ import annotations

import torch

from asyncddp import exported_by
from asyncddp.comm import p2p
from asyncddp.comm.buffers import check_dtype, plain
from asyncddp.comm.engine import Op, live_engine
from asyncddp.comm.neighbor_plan import check_pattern, check_ranks
from asyncddp.errors import CommError

__all__ = exported_by(__name__)


def _run_allgather(engine, batch: list[Op]) -> list:
    (op,) = batch
    x, srcs, dsts, check = op.args["x"], op.args["srcs"], op.args["dsts"], op.args["check"]
    comm = engine.world
    if check:
        check_pattern(engine, comm, dsts, srcs)
    # Dim-0 sizes may differ: first exchange each rank's dim 0, then the data.
    header = torch.tensor([x.shape[0] if x.dim() else 1], dtype=torch.int64)
    heads = p2p.exchange(engine, comm, {d: header for d in dsts}, {s: ((1,), torch.int64) for s in srcs}, header)
    rest = tuple(x.shape[1:]) if x.dim() else ()
    specs = {s: ((int(heads[s][0]), *rest), x.dtype) for s in srcs}
    flat = x if x.dim() else x.reshape(1)
    received = p2p.exchange(engine, comm, {d: flat for d in dsts}, specs, x)
    if not srcs:
        return [torch.empty((0, *rest), dtype=x.dtype, device=x.device)]
    return [torch.cat([received[s] for s in srcs], dim=0)]


def _neighbor_allgather(tensor, *, blocking: bool, src_ranks=None, dst_ranks=None, name=None,
                        enable_topo_check=True):  # fmt: skip
    if not isinstance(tensor, torch.Tensor):
        raise CommError(f"neighbor_allgather expects a torch.Tensor, got {type(tensor).__name__}")
    check_dtype(tensor, "neighbor_allgather")
    engine = live_engine()
    ctx, me = engine.ctx, engine.rank
    if (src_ranks is None) != (dst_ranks is None):
        raise CommError("neighbor_allgather: give src_ranks and dst_ranks together, or neither")
    if src_ranks is None:
        srcs = sorted(j for j in ctx.topology.predecessors(me) if j != me)  # validated topology
        dsts = sorted(j for j in ctx.topology.successors(me) if j != me)
        check = False
    else:
        srcs = check_ranks(src_ranks, engine.size, me, "src_ranks")
        dsts = sorted(set(check_ranks(dst_ranks, engine.size, me, "dst_ranks")))
        check = bool(enable_topo_check)
    x = plain(tensor)
    op = Op(
        kind="neighbor_allgather",
        name=name or "neighbor_allgather",
        run=_run_allgather,
        args={"x": x, "srcs": srcs, "dsts": dsts, "check": check},
        nbytes=x.nbytes,
        peers=tuple(sorted(set(srcs) | set(dsts))),
    )
    return engine.call(op, blocking)


def neighbor_allgather(tensor, **options):
    """In-neighbours' tensors (not this rank's) concatenated on dim 0, in ``src_ranks`` order.

    Keywords: ``src_ranks`` and ``dst_ranks`` (together; default every in-neighbour in
    ascending rank order, and every out-neighbour), ``name``, ``enable_topo_check`` (default
    True: explicit ranks that do not match across ranks raise ``CommError`` instead of hanging).
    Dim-0 sizes may differ between ranks.
    """
    return _neighbor_allgather(tensor, **options, blocking=True)


def neighbor_allgather_nonblocking(tensor, **options):
    """Start ``neighbor_allgather`` (same keywords); returns a handle."""
    return _neighbor_allgather(tensor, **options, blocking=False)
