"""Hierarchical neighbour averaging: average inside each machine, then between machines.

Three stages on the communication thread: an allreduce over the machine-local communicator
(the machine's mean), neighbour averaging of the machine means among the machine leaders
(local rank 0, on the cross-machine communicator, whose ranks are the machine ranks) over the
machine topology (``set_machine_topology``) or the given machine weights, and a broadcast of the
leader's result inside the machine. Taking the machine mean before the exchange (BlueFog sums and
divides by ``local_size`` at the end) gives the same value on homogeneous clusters and the right
one when machines run different numbers of ranks. Integer tensors are combined in float64 and
rounded to the nearest integer.
"""

from __future__ import annotations

import torch

from asyncddp.comm.buffers import numpy_view
from asyncddp.comm.engine import Op, get_engine
from asyncddp.comm.neighbor import check_averagable, run_neighbor_allreduce
from asyncddp.comm.neighbor_plan import make_plan

__all__ = [
    "hierarchical_neighbor_allreduce",
    "hierarchical_neighbor_allreduce_",
    "hierarchical_neighbor_allreduce_nonblocking",
    "hierarchical_neighbor_allreduce_nonblocking_",
]


def _run(engine, batch: list[Op]) -> list:
    from mpi4py import MPI

    (op,) = batch
    x, plan = op.args["x"], op.args["plan"]
    work_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else (
        x.dtype if x.dtype.is_floating_point else torch.float64
    )  # fmt: skip
    work = x.detach().to("cpu", work_dtype, copy=True).reshape(-1)
    engine.local.Allreduce(MPI.IN_PLACE, numpy_view(work), op=MPI.SUM)
    engine.count_messages(1)
    work /= engine.local.Get_size()
    if engine.local.Get_rank() == 0:
        work = run_neighbor_allreduce(engine, engine.cross, work, plan)
    engine.local.Bcast(numpy_view(work), root=0)
    engine.count_messages(1)
    if not x.dtype.is_floating_point:
        work = work.round()
    result = work.reshape(x.shape).to(x.dtype).to(x.device)
    target = op.args["inplace"]
    if target is not None:
        target.copy_(result)
        result = target
    return [result]


def _submit(tensor, self_weight, src_machine_weights, dst_machine_weights, name, check, inplace,
            blocking=False):  # fmt: skip
    check_averagable(tensor, "hierarchical_neighbor_allreduce")
    engine = get_engine()
    ctx = engine.ctx
    plan = make_plan(
        ctx.machine_topology, ctx.machine_is_weighted, ctx.machine_rank, ctx.machine_size,
        self_weight, src_machine_weights, dst_machine_weights, bool(check),
    )  # fmt: skip
    x = tensor.detach().contiguous()
    op = Op(
            kind="hierarchical_neighbor_allreduce",
            name=name or "hierarchical_neighbor_allreduce",
            run=_run,
            args={"x": x, "plan": plan, "inplace": tensor if inplace else None},
            nbytes=x.numel() * x.element_size(),
    )  # fmt: skip
    return engine.execute(op) if blocking else engine.submit(op)


def hierarchical_neighbor_allreduce_nonblocking(
    tensor, *, self_weight=None, src_machine_weights=None, dst_machine_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """Start ``hierarchical_neighbor_allreduce``; returns a handle."""
    return _submit(tensor, self_weight, src_machine_weights, dst_machine_weights, name,
                   enable_topo_check, False)  # fmt: skip


def hierarchical_neighbor_allreduce_nonblocking_(
    tensor, *, self_weight=None, src_machine_weights=None, dst_machine_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """In-place ``hierarchical_neighbor_allreduce_nonblocking``: the result is written into ``tensor``."""
    return _submit(tensor, self_weight, src_machine_weights, dst_machine_weights, name,
                   enable_topo_check, True)  # fmt: skip


def hierarchical_neighbor_allreduce(
    tensor, *, self_weight=None, src_machine_weights=None, dst_machine_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """Machine mean, then neighbour averaging of machine means over the machine topology.

    The weights mean what they mean in ``neighbor_allreduce``, with machine ranks in place of
    ranks. Every rank of a machine gets the same result.
    """
    return _submit(tensor, self_weight, src_machine_weights, dst_machine_weights, name,
                   enable_topo_check, False, True)  # fmt: skip


def hierarchical_neighbor_allreduce_(
    tensor, *, self_weight=None, src_machine_weights=None, dst_machine_weights=None, name=None,
    enable_topo_check=True,
):  # fmt: skip
    """In-place ``hierarchical_neighbor_allreduce``; returns ``tensor``."""
    return _submit(tensor, self_weight, src_machine_weights, dst_machine_weights, name,
                   enable_topo_check, True, True)  # fmt: skip
