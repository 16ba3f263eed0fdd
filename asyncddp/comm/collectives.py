"""Global collectives: allreduce, broadcast, allgather, reduce_scatter, barrier.

Each op is queued on the communication thread (``asyncddp.comm.engine``) and has a blocking form,
a ``*_nonblocking`` form returning a handle and, where it makes sense, an in-place ``*_`` form.
Reductions of float16/bfloat16 run in float32 and are cast back; averages of integer tensors are
the exact integer sum divided by the number of ranks, rounded to the nearest integer, ties to even
(``asyncddp.comm.averaging``'s rule for every average). Small allreduces issued
back to back are fused into one buffer. CUDA tensors are passed directly to a CUDA-aware MPI and
staged through host memory otherwise. Large host allreduces, reduce-scatters and allgathers on a
world that spans machines run as rings (``asyncddp.comm.ring``), the rest as MPI's collectives.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import torch

from asyncddp import exported_by
from asyncddp.comm import device
from asyncddp.comm.averaging import as_dtype, mean_, work_dtype
from asyncddp.comm.buffers import byte_view, check_dtype, host_empty, is_direct_cpu, numpy_view, plain, reduction_dtype
from asyncddp.comm.engine import Op, live_engine
from asyncddp.comm.neighbor_plan import as_rank
from asyncddp.comm.ring import chunk_bounds, ring_allgather_, ring_allreduce_, ring_reduce_scatter_, use_ring
from asyncddp.comm.shape_check import agree, describe, mismatch_error
from asyncddp.comm.traffic import allgather_bytes, allreduce_bytes, broadcast_bytes, reduce_scatter_bytes
from asyncddp.errors import CommError, RankLostError

__all__ = exported_by(__name__)

_OPS = ("sum", "min", "max", "prod")
# Dtypes whose own memory MPI reduces directly (numpy-typed, and their sum is computed in the
# same dtype: float16/bfloat16 are summed in float32, bool is refused).
_REDUCE_DIRECT = frozenset(
    (torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
)
# Dtypes that move as raw bytes straight from/into a tensor's memory (numpy has no bfloat16).
_MOVE_DIRECT = _REDUCE_DIRECT | {torch.float16, torch.bool}
_MPI_OPS: dict = {}


def _mpi_op(op: str):
    if not _MPI_OPS:
        from mpi4py import MPI

        _MPI_OPS.update({"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX, "prod": MPI.PROD})
    return _MPI_OPS[op]


def _host_view(x: torch.Tensor) -> torch.Tensor:
    """A CPU tensor MPI can read: ``x`` itself on CPU, a host copy of a CUDA tensor."""
    return x if x.device.type == "cpu" else x.cpu()


def _tensor(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CommError(f"{what} expects a torch.Tensor, got {type(value).__name__}")
    check_dtype(value, what)
    return value


def _finish(op: Op, result: torch.Tensor) -> torch.Tensor:
    target = op.args.get("inplace")
    if target is not None:
        target.copy_(result)
        return target
    return result


def _spans_machines(engine) -> bool:
    """True when the world communicator reaches more than one machine."""
    return engine.ctx.machine_size > 1


def _reduce_host(engine, comm, array: np.ndarray, op: str, local: bool) -> None:
    """``array`` reduced in place: by a ring for large buffers across machines
    (``asyncddp.comm.ring``), else by MPI's ``Allreduce``."""
    from mpi4py import MPI

    if use_ring(array.nbytes, comm.Get_size(), not local and _spans_machines(engine)):
        ring_allreduce_(engine, comm, array, op)
        return
    comm.Allreduce(MPI.IN_PLACE, array, op=_mpi_op(op))
    engine.count_sent(1, allreduce_bytes(array.nbytes, comm.Get_size()))


def _reduce_in_place(engine, comm, work: torch.Tensor, op: str, local: bool) -> None:
    from mpi4py import MPI

    if device.is_cuda(work) and device.mpi_is_cuda_aware():
        comm.Allreduce(MPI.IN_PLACE, work, op=_mpi_op(op))  # typed via __cuda_array_interface__
        engine.count_sent(1, allreduce_bytes(work.nbytes, comm.Get_size()))
        return
    host = _host_view(work)
    _reduce_host(engine, comm, numpy_view(host), op, local)
    if host is not work:
        work.copy_(host)


def _sum_dtype(dtype: torch.dtype, average: bool) -> torch.dtype:
    """The dtype values of ``dtype`` are summed in over the ranks: an average takes the averaging
    core's exact sum (integers in int64, where their own dtype would wrap), a plain reduction
    the dtype MPI reduces (half precision in float32)."""
    return work_dtype(dtype, exact_sum=True) if average else reduction_dtype(dtype)


def _allreduce_direct(engine, tensor: torch.Tensor, op: str, average: bool, local: bool) -> torch.Tensor:
    """Reduce ``tensor`` in its own memory, then divide for an average (floats only: an integer
    average sums in int64, through the copying path)."""
    comm = engine.local if local else engine.world
    mine = tensor.numpy()
    _reduce_host(engine, comm, mine, op, local)
    if average and op == "sum":
        mean_(mine, comm.Get_size())
    return tensor


def _agree_allreduce(engine, comm, batch: list[Op]) -> None:
    """Every rank raises unless all passed the same shapes (every op of a fused batch), dtype
    and arguments."""
    first = batch[0].args
    xs = [op.args["x"] for op in batch]
    spec = (tuple(x.shape for x in xs), xs[0].dtype, first["op"], first["average"])

    def text():
        tensors = ", ".join(describe(x) for x in xs)
        fused = f"{len(xs)} fused ops: " if len(xs) > 1 else ""
        return f"{fused}{tensors} with op={first['op']}, average={first['average']}"

    agree(engine, comm, "allreduce", spec, text)


def _run_allreduce(engine, batch: list[Op]) -> list:
    first = batch[0].args
    target = first["inplace"]
    average = first["average"] and first["op"] == "sum"
    _agree_allreduce(engine, engine.local if first["local"] else engine.world, batch)
    if len(batch) == 1 and target is not None and is_direct_cpu(target, _REDUCE_DIRECT) \
            and not (average and not target.dtype.is_floating_point):
        return [_allreduce_direct(engine, target, first["op"], first["average"], first["local"])]
    xs = [op.args["x"] for op in batch]
    flat = xs[0].reshape(-1) if len(xs) == 1 else torch.cat([x.reshape(-1) for x in xs])
    work = flat.to(_sum_dtype(flat.dtype, average), copy=True)
    comm = engine.local if first["local"] else engine.world
    _reduce_in_place(engine, comm, work, first["op"], first["local"])
    if average:
        work = mean_(work, comm.Get_size())
    work = as_dtype(work, flat.dtype)
    pieces = work.split([x.numel() for x in xs])
    return [_finish(op, p.view(x.shape)) for op, p, x in zip(batch, pieces, xs)]


def _allreduce(tensor, *, inplace: bool, blocking: bool, average=True, op="sum", name=None, local=False):
    """The one implementation behind the four public variants."""
    x = _tensor(tensor, "allreduce")
    if op not in _OPS:
        raise CommError(f"allreduce: op={op!r} is not one of {', '.join(_OPS)}")
    if x.dtype == torch.bool:
        raise CommError("allreduce cannot reduce bool tensors; convert to a number type")
    engine = live_engine()
    x = plain(x)
    average, local = bool(average), bool(local)
    args = {"x": x, "average": average, "op": op, "local": local, "inplace": tensor if inplace else None}
    fuse_key = None if blocking else ("allreduce", x.dtype, x.device, average, op, local)
    return engine.call(Op("allreduce", name or "allreduce", _run_allreduce, args, x.nbytes, fuse_key), blocking)


def allreduce(tensor, average=True, op="sum", name=None, local=False):
    """Reduce ``tensor`` over all ranks with ``op`` (sum, min, max, prod).

    With ``op="sum"`` and ``average=True`` (default) the sum is divided by the number of ranks;
    ``average`` is ignored for the other ops. ``local=True`` reduces over the ranks of this
    machine only (BlueFog's ``is_hierarchical_local``).
    """
    return _allreduce(tensor, average=average, op=op, name=name, local=local, inplace=False, blocking=True)


def allreduce_(tensor, average=True, op="sum", name=None, local=False):
    """In-place ``allreduce``; returns ``tensor`` (a contiguous CPU tensor of an MPI-native dtype
    is reduced in its own memory: one ``Allreduce(IN_PLACE)``, no copy; an integer average is
    summed in an int64 copy, which cannot wrap)."""
    return _allreduce(tensor, average=average, op=op, name=name, local=local, inplace=True, blocking=True)


def allreduce_nonblocking(tensor, average=True, op="sum", name=None, local=False):
    """Start ``allreduce``; returns a handle."""
    return _allreduce(tensor, average=average, op=op, name=name, local=local, inplace=False, blocking=False)


def allreduce_nonblocking_(tensor, average=True, op="sum", name=None, local=False):
    """Start an in-place ``allreduce``; returns a handle."""
    return _allreduce(tensor, average=average, op=op, name=name, local=local, inplace=True, blocking=False)


def _broadcast_direct(engine, tensor: torch.Tensor, root: int) -> torch.Tensor:
    """``Bcast`` straight into (from, on the root) ``tensor``'s memory, as bytes like the copying path."""
    from mpi4py import MPI

    engine.world.Bcast([tensor.numpy(), MPI.BYTE], root=root)
    engine.count_sent(1, broadcast_bytes(tensor.nbytes, engine.size))
    return tensor


def _run_broadcast(engine, batch: list[Op]) -> list:
    from mpi4py import MPI

    (op,) = batch
    x, root = op.args["x"], op.args["root"]
    target = op.args["inplace"]
    agree(engine, engine.world, "broadcast", (x.shape, x.dtype, root), lambda: f"{describe(x)} from root_rank={root}")
    if target is not None and is_direct_cpu(target, _MOVE_DIRECT):
        return [_broadcast_direct(engine, target, root)]
    out = x.clone() if engine.rank == root else torch.empty_like(x)
    flat = out.reshape(-1).view(torch.uint8) if out.dtype != torch.uint8 else out.reshape(-1)
    if device.is_cuda(out) and device.mpi_is_cuda_aware():
        engine.world.Bcast([flat, MPI.BYTE], root=root)
    else:
        host = _host_view(flat)
        engine.world.Bcast([byte_view(host), MPI.BYTE], root=root)
        if host is not flat:
            flat.copy_(host)
    engine.count_sent(1, broadcast_bytes(flat.numel(), engine.size))
    return [_finish(op, out)]


def _broadcast(tensor, root_rank, *, inplace: bool, blocking: bool, name=None):
    """The one implementation behind the four public variants."""
    x = _tensor(tensor, "broadcast")
    engine = live_engine()
    root_rank = as_rank(root_rank, engine.size, "broadcast: root_rank")
    x = plain(x)
    args = {"x": x, "root": root_rank, "inplace": tensor if inplace else None}
    return engine.call(Op("broadcast", name or "broadcast", _run_broadcast, args, x.nbytes, peers=(root_rank,)),
                       blocking)  # fmt: skip


def broadcast(tensor, root_rank, name=None):
    """``root_rank``'s tensor, on every rank (a new tensor; ``broadcast_`` writes in place)."""
    return _broadcast(tensor, root_rank, name=name, inplace=False, blocking=True)


def broadcast_(tensor, root_rank, name=None):
    """In-place ``broadcast``: ``root_rank``'s tensor written into ``tensor``; returns it."""
    return _broadcast(tensor, root_rank, name=name, inplace=True, blocking=True)


def broadcast_nonblocking(tensor, root_rank, name=None):
    """Start ``broadcast``; returns a handle."""
    return _broadcast(tensor, root_rank, name=name, inplace=False, blocking=False)


def broadcast_nonblocking_(tensor, root_rank, name=None):
    """Start an in-place ``broadcast``; returns a handle."""
    return _broadcast(tensor, root_rank, name=name, inplace=True, blocking=False)


@functools.lru_cache(maxsize=256)
def _signature(rest: tuple, dtype: torch.dtype) -> int:
    """A number standing for (trailing shape, dtype): ranks compare these instead of pickles."""
    return zlib.crc32(f"{dtype}|{rest}".encode())


_NO_OUT, _BAD_OUT = -1, -2  # header codes: no ``out=`` given; ``out=`` refused by its rank


def _out_code(x: torch.Tensor, out) -> int:
    """What this rank tells the others about its ``out=``: its dim 0, or a code."""
    if out is None:
        return _NO_OUT
    rest = tuple(x.shape[1:]) if x.dim() else ()
    if not isinstance(out, torch.Tensor) or out.dtype != x.dtype or out.dim() != len(rest) + 1 \
            or tuple(out.shape[1:]) != rest:
        return _BAD_OUT
    return int(out.shape[0])


def _check_out(heads, me: int, x: torch.Tensor, out, total: int) -> None:
    """Every rank raises when any rank's ``out=`` cannot hold the result (nobody is left
    waiting in the data round for a rank that gave up)."""
    bad = [r for r, code in enumerate(heads[:, 2].tolist()) if code not in (_NO_OUT, total)]
    if not bad:
        return
    rest = tuple(x.shape[1:]) if x.dim() else ()
    want = f"a {x.dtype} tensor of shape {[total, *rest]}"
    if me in bad:
        got = (f"a {type(out).__name__}" if not isinstance(out, torch.Tensor)
               else f"a {out.dtype} tensor of shape {list(out.shape)}")
        raise CommError(f"allgather: out= is {got}, but the result is {want} (dim 0 summed over "
                        "the ranks); allocate out with that shape and dtype")
    raise CommError(f"allgather: rank(s) {bad} passed an out= that cannot hold the result ({want})")


def _gather(engine, x: torch.Tensor, out=None) -> torch.Tensor:
    """Every rank's ``x`` on dim 0 in rank order: a 24-byte header round, then the data.

    The header (dim 0, signature of trailing shape and dtype, ``out=``'s dim 0 or a code) is a
    typed ``Allgather`` of three int64 per rank, far cheaper than a pickled one; only when
    signatures differ (every rank sees the same table, so all take this branch together) are
    the readable details gathered for the error message. Equal dim 0 everywhere uses
    ``Allgather``, else ``Allgatherv``. The data lands straight in ``out`` when it is a
    contiguous CPU tensor outside autograd, else in a fresh (huge-page) buffer.
    """
    from mpi4py import MPI

    comm, n = engine.world, engine.size
    lead = x.shape[0] if x.dim() else 1
    rest = tuple(x.shape[1:]) if x.dim() else ()
    mine = np.array([lead, _signature(rest, x.dtype), _out_code(x, out)], dtype=np.int64)
    heads = np.empty((n, 3), dtype=np.int64)
    comm.Allgather(mine, heads)
    engine.count_overhead("shape_check", 1, allgather_bytes(mine.nbytes, n))
    if (heads[:, 1] != mine[1]).any():
        text = f"{str(x.dtype).removeprefix('torch.')} with trailing shape {list(rest)}"
        texts = comm.allgather(text)
        engine.count_overhead("shape_check", 1, allgather_bytes(len(text), n))
        raise mismatch_error("allgather", texts, engine.rank, "the same dtype and shape after dim 0")
    leads = heads[:, 0].tolist()
    _check_out(heads, engine.rank, x, out, sum(leads))
    direct = out is not None and is_direct_cpu(out, _MOVE_DIRECT | {torch.bfloat16})
    result = out if direct else host_empty((sum(leads), *rest), x.dtype)
    host = _host_view(x)
    send = host.numpy() if host.dtype in _MOVE_DIRECT else byte_view(host)
    recv = result.numpy() if result.dtype in _MOVE_DIRECT else byte_view(result)
    row = x.element_size() * torch.Size(rest).numel()
    if use_ring(result.nbytes, n, _spans_machines(engine)):
        bounds = [sum(leads[:r]) * row for r in range(n + 1)]
        whole = byte_view(result)
        whole[bounds[engine.rank]:bounds[engine.rank + 1]] = byte_view(host)
        ring_allgather_(engine, comm, whole, bounds)
    elif min(leads) == max(leads):
        comm.Allgather([send, MPI.BYTE], [recv, MPI.BYTE])
        engine.count_sent(1, allgather_bytes(host.nbytes, n))
    else:
        comm.Allgatherv([send, MPI.BYTE], [recv, [h * row for h in leads], MPI.BYTE])
        engine.count_sent(1, allgather_bytes(host.nbytes, n))
    if out is not None and not direct:
        with torch.no_grad():
            out.copy_(result)
        return out
    return result if x.device.type == "cpu" else result.to(x.device)


def _run_allgather(engine, batch: list[Op]) -> list:
    (op,) = batch
    return [_gather(engine, op.args["x"], op.args["out"])]


def _allgather(tensor, *, blocking: bool, name=None, out=None):
    x = plain(_tensor(tensor, "allgather"))
    return live_engine().call(Op("allgather", name or "allgather", _run_allgather, {"x": x, "out": out}, x.nbytes),
                              blocking)  # fmt: skip


def allgather(tensor, name=None, *, out=None):
    """Every rank's tensor concatenated on dim 0 in rank order (dim-0 sizes may differ).

    ``out``: a tensor of the result's shape and dtype to write into (returned), like
    ``torch.distributed.all_gather_into_tensor``: a contiguous CPU ``out`` receives the data
    directly, so a loop that gathers into the same buffer allocates nothing. Every rank checks
    every rank's ``out`` before any data moves; a wrong one raises ``CommError`` on all ranks.
    """
    return _allgather(tensor, name=name, out=out, blocking=True)


def allgather_nonblocking(tensor, name=None, *, out=None):
    """Start ``allgather``; returns a handle whose result is the gathered tensor (``out`` if given)."""
    return _allgather(tensor, name=name, out=out, blocking=False)


def _run_reduce_scatter(engine, batch: list[Op]) -> list:
    (op,) = batch
    x, average, how = op.args["x"], op.args["average"], op.args["op"]
    agree(engine, engine.world, "reduce_scatter", (x.shape, x.dtype, how, average),
          lambda: f"{describe(x)} with op={how}, average={average}")
    n, me = engine.size, engine.rank
    starts = chunk_bounds(x.shape[0], n)  # torch.tensor_split's blocks of dim 0
    row = torch.Size(x.shape[1:]).numel()
    average = average and how == "sum"
    dtype = _sum_dtype(x.dtype, average)
    if use_ring(x.numel() * dtype.itemsize, n, _spans_machines(engine)):
        work = _host_view(x).to(dtype, copy=True)  # the ring reduces into it
        ring_reduce_scatter_(engine, engine.world, numpy_view(work), [s * row for s in starts], how)
        out = work[starts[me]:starts[me + 1]].clone()
    else:
        work = _host_view(x).to(dtype)  # MPI only reads it: no copy when it can
        out = torch.empty((starts[me + 1] - starts[me], *x.shape[1:]), dtype=work.dtype)
        engine.world.Reduce_scatter(numpy_view(work), numpy_view(out),
                                    [(starts[r + 1] - starts[r]) * row for r in range(n)], op=_mpi_op(how))
        engine.count_sent(1, reduce_scatter_bytes(work.nbytes, n))
    if average:
        out = mean_(out, n)
    return [as_dtype(out, x.dtype).to(x.device)]


def _reduce_scatter(tensor, *, blocking: bool, average=True, op="sum", name=None):
    x = _tensor(tensor, "reduce_scatter")
    if op not in _OPS:
        raise CommError(f"reduce_scatter: op={op!r} is not one of {', '.join(_OPS)}")
    if x.dim() == 0 or x.dtype == torch.bool:
        raise CommError("reduce_scatter needs a numeric tensor with at least one dimension")
    x = plain(x)
    args = {"x": x, "average": bool(average), "op": op}
    return live_engine().call(Op("reduce_scatter", name or "reduce_scatter", _run_reduce_scatter, args, x.nbytes),
                              blocking)  # fmt: skip


def reduce_scatter(tensor, average=True, op="sum", name=None):
    """Reduce over ranks, then rank r keeps block r of dim 0 (blocks as ``torch.tensor_split``).

    With ``op="sum"`` and ``average=True`` (default, like ``allreduce``) the block is divided by
    the number of ranks.
    """
    return _reduce_scatter(tensor, average=average, op=op, name=name, blocking=True)


def reduce_scatter_nonblocking(tensor, average=True, op="sum", name=None):
    """Start ``reduce_scatter``; returns a handle."""
    return _reduce_scatter(tensor, average=average, op=op, name=name, blocking=False)


def _run_barrier(engine, batch: list[Op]) -> list:
    engine.world.Barrier()
    engine.count_sent(1, 0)
    return [None]


def barrier(name=None):
    """Wait until every rank has reached this point (and all earlier queued ops have run)."""
    return live_engine().call(Op("barrier", name or "barrier", _run_barrier, None, 0), True)


def barrier_nonblocking(name=None):
    """Start a barrier; returns a handle."""
    return live_engine().call(Op("barrier", name or "barrier", _run_barrier, None, 0), False)


def agree_on_step(step: int) -> int:
    """The largest ``step`` any survivor passes (blocking, collective): what a loop resumes at
    after ``RankLostError``, since survivors can meet a loss one step apart. Retries by itself
    when yet another rank is lost meanwhile."""
    while True:
        try:
            value = allreduce(torch.tensor([int(step)], dtype=torch.int64), op="max", name="agree_on_step")
            return int(value[0])
        except RankLostError:
            continue
