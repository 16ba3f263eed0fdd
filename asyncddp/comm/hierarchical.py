"""Hierarchical neighbour averaging: average inside each machine, then between machines.

Three stages on the communication thread: an allreduce over the machine-local communicator
(the machine's mean), neighbour averaging of the machine means among the machine leaders
(local rank 0, on the cross-machine communicator, whose ranks are the machine ranks) over the
machine topology (``set_machine_topology``) or the given machine weights, and a broadcast of the
leader's result inside the machine. Taking the machine mean before the exchange (BlueFog sums and
divides by ``local_size`` at the end) gives the same value on homogeneous clusters and the right
one when machines run different numbers of ranks. Integer tensors are combined in float64 and
rounded once, at the end, to the nearest integer (``asyncddp.comm.averaging``'s rule). Every
rank first checks that all ranks passed the same shape and dtype (``asyncddp.comm.shape_check``).
"""

from __future__ import annotations

from asyncddp import exported_by
from asyncddp.comm.averaging import as_dtype, mean_, work_dtype
from asyncddp.comm.buffers import numpy_view, plain
from asyncddp.comm.engine import Op, live_engine
from asyncddp.comm.neighbor import check_averagable, run_neighbor_allreduce
from asyncddp.comm.neighbor_plan import make_plan
from asyncddp.comm.shape_check import agree, describe
from asyncddp.comm.traffic import allreduce_bytes, broadcast_bytes

__all__ = exported_by(__name__)


def _run(engine, batch: list[Op]) -> list:
    from mpi4py import MPI

    (op,) = batch
    x, plan = op.args["x"], op.args["plan"]
    # Over the whole job: a mismatch inside one machine, or between leaders only, must stop
    # every rank, not only those whose messages it garbles.
    agree(engine, engine.world, "hierarchical_neighbor_allreduce", (x.shape, x.dtype), lambda: describe(x))
    work = x.detach().to("cpu", work_dtype(x.dtype), copy=True).reshape(-1)
    engine.local.Allreduce(MPI.IN_PLACE, numpy_view(work), op=MPI.SUM)
    engine.count_sent(1, allreduce_bytes(work.nbytes, engine.local.Get_size()))
    mean_(work, engine.local.Get_size())
    if engine.local.Get_rank() == 0:
        work = run_neighbor_allreduce(engine, engine.cross, work, plan)
    engine.local.Bcast(numpy_view(work), root=0)
    engine.count_sent(1, broadcast_bytes(work.nbytes, engine.local.Get_size()))
    result = as_dtype(work, x.dtype).reshape(x.shape).to(x.device)
    target = op.args["inplace"]
    if target is not None:
        target.copy_(result)
        result = target
    return [result]


def _hierarchical(tensor, *, inplace: bool, blocking: bool, self_weight=None, src_machine_weights=None,
                 dst_machine_weights=None, name=None, enable_topo_check=True):  # fmt: skip
    """The one implementation behind the four public variants."""
    check_averagable(tensor, "hierarchical_neighbor_allreduce")
    engine = live_engine()
    ctx = engine.ctx
    plan = make_plan(
        ctx.machine_topology, ctx.machine_is_weighted, ctx.machine_rank, ctx.machine_size,
        self_weight, src_machine_weights, dst_machine_weights, bool(enable_topo_check),
    )  # fmt: skip
    x = plain(tensor)
    args = {"x": x, "plan": plan, "inplace": tensor if inplace else None}
    op = Op("hierarchical_neighbor_allreduce", name or "hierarchical_neighbor_allreduce", _run, args, x.nbytes)
    return engine.call(op, blocking)


def hierarchical_neighbor_allreduce(tensor, **options):
    """Machine mean, then neighbour averaging of machine means over the machine topology.

    Keywords: ``self_weight``, ``src_machine_weights``, ``dst_machine_weights``, ``name``,
    ``enable_topo_check``, meaning what they mean in ``neighbor_allreduce`` with machine ranks
    in place of ranks. Every rank of a machine gets the same result.
    """
    return _hierarchical(tensor, **options, inplace=False, blocking=True)


def hierarchical_neighbor_allreduce_(tensor, **options):
    """In-place ``hierarchical_neighbor_allreduce`` (same keywords); returns ``tensor``."""
    return _hierarchical(tensor, **options, inplace=True, blocking=True)


def hierarchical_neighbor_allreduce_nonblocking(tensor, **options):
    """Start ``hierarchical_neighbor_allreduce`` (same keywords); returns a handle."""
    return _hierarchical(tensor, **options, inplace=False, blocking=False)


def hierarchical_neighbor_allreduce_nonblocking_(tensor, **options):
    """In-place ``hierarchical_neighbor_allreduce_nonblocking``: the result is written into ``tensor``."""
    return _hierarchical(tensor, **options, inplace=True, blocking=False)
