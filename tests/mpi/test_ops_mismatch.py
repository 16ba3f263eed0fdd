"""Per-rank checks that ops given different shapes, dtypes or arguments on different ranks raise
``CommError`` on every rank, naming the ranks and shapes, and leave the job in step (run at 3
and 4 ranks, and at 4 ranks as two fake machines of two for the hierarchical op).

Each test ends with a matching op whose exact result proves no rank was left behind or ahead.
"""

import contextlib
import re
import threading

import pytest
import torch

import asyncddp as addp
from asyncddp.comm.engine import Op, get_engine


@pytest.fixture(autouse=True)
def _needs_ranks():
    if addp.size() < 2:
        pytest.skip("needs two ranks")


def _in_step():
    """A matching op afterwards: the exact sum proves every rank is at the same op."""
    n = addp.size()
    assert torch.equal(addp.allreduce(torch.arange(3.0) + addp.rank(), average=False),
                       torch.arange(3.0) * n + n * (n - 1) / 2)  # fmt: skip


def _every_rank_listed(what: str, per_rank) -> str:
    """A pattern the error must match: every rank's description, ranks with equal ones grouped
    in order of first appearance (``ranks 0, 1: ...; rank 2: ...``)."""
    groups = {}
    for j, text in enumerate(per_rank):
        groups.setdefault(text, []).append(j)
    parts = [f"rank{'s' if len(js) > 1 else ''} {', '.join(map(str, js))}: {text}" for text, js in groups.items()]
    return re.escape(f"{what}: ranks passed different tensors or arguments ({'; '.join(parts)})")


def _raises(call, pattern):
    with pytest.raises(addp.CommError, match=pattern) as info:
        call()
    assert f"this is rank {addp.rank()}" in str(info.value)


def _sync(handle_or_value):
    return addp.synchronize(handle_or_value)


ALLREDUCE_VARIANTS = [
    ("allreduce", lambda x: addp.allreduce(x)),
    ("allreduce_", lambda x: addp.allreduce_(x)),
    ("allreduce_nonblocking", lambda x: _sync(addp.allreduce_nonblocking(x))),
    ("allreduce_nonblocking_", lambda x: _sync(addp.allreduce_nonblocking_(x))),
]


@pytest.mark.parametrize("name,call", ALLREDUCE_VARIANTS, ids=[v[0] for v in ALLREDUCE_VARIANTS])
def test_allreduce_sizes_differ(name, call):
    n = addp.size()
    x = torch.zeros(addp.rank() + 1)  # the last rank's is the largest
    pattern = _every_rank_listed("allreduce", [f"float32 [{j + 1}] with op=sum, average=True" for j in range(n)])
    _raises(lambda: call(x), pattern)
    assert torch.equal(x, torch.zeros(addp.rank() + 1))  # in-place variants wrote nothing
    _in_step()


@pytest.mark.parametrize("name,call", ALLREDUCE_VARIANTS, ids=[v[0] for v in ALLREDUCE_VARIANTS])
def test_allreduce_same_size_other_shape_or_dtype(name, call):
    r, n = addp.rank(), addp.size()
    # Rank 0: 2x3; rank 1: 3x2 (same bytes); others: 2x3 float64.
    x = torch.ones(2, 3) if r == 0 else torch.ones(3, 2) if r == 1 else torch.ones(2, 3, dtype=torch.float64)
    texts = ["float32 [2, 3]", "float32 [3, 2]", *["float64 [2, 3]"] * (n - 2)]
    with pytest.raises(addp.CommError) as info:
        call(x)
    message = str(info.value)
    assert "rank 0: float32 [2, 3]" in message and "rank 1: float32 [3, 2]" in message
    if n > 2:
        others = ", ".join(str(j) for j in range(2, n))
        assert f"rank{'s' if n > 3 else ''} {others}: {texts[2]}" in message
    _in_step()


def test_allreduce_op_differs():
    op = "max" if addp.rank() == 0 else "sum"
    _raises(lambda: addp.allreduce(torch.ones(2), op=op), r"rank 0: float32 \[2\] with op=max")
    _in_step()


def test_allreduce_large_on_one_rank_nonblocking():
    # A tensor above half the fusion threshold on one rank only: every rank still negotiates
    # fusion the same way, then all raise.
    big = get_engine().threshold // 4 + 1
    x = torch.zeros(big if addp.rank() == 0 else 4)
    _raises(lambda: _sync(addp.allreduce_nonblocking(x)), rf"rank 0: float32 \[{big}\].*ranks? 1.*: float32 \[4\]")
    _in_step()


@contextlib.contextmanager
def _held(engine):
    """Ops issued in the block queue up behind a gate op and start together (one fused batch)."""
    gate = threading.Event()
    handle = engine.call(Op("gate", "gate", lambda engine, batch: [gate.wait()], None, 0), blocking=False)
    try:
        yield
    finally:
        gate.set()
        handle.wait()


def test_mismatch_inside_a_fused_batch():
    r, n = addp.rank(), addp.size()
    engine = get_engine()
    shapes = [(4,), (2 if r == n - 1 else 3,), (5,)]  # only the middle op of the last rank differs
    with _held(engine):
        handles = [addp.allreduce_nonblocking(torch.ones(s)) for s in shapes]
    for handle in handles:  # every op of the batch fails, on every rank
        with pytest.raises(addp.CommError, match=rf"3 fused ops: .*rank {n - 1}: 3 fused ops: float32 \[4\], "
                                                 r"float32 \[2\], float32 \[5\]"):
            addp.synchronize(handle)
    with _held(engine):  # the same batch, matching: fused and exact
        handles = [addp.allreduce_nonblocking(torch.full(s, float(r)), average=False) for s in [(4,), (3,), (5,)]]
    total = n * (n - 1) / 2
    for handle, s in zip(handles, [(4,), (3,), (5,)]):
        assert torch.equal(addp.synchronize(handle), torch.full(s, total))


BROADCAST_VARIANTS = [
    ("broadcast", lambda x, root: addp.broadcast(x, root)),
    ("broadcast_", lambda x, root: addp.broadcast_(x, root)),
    ("broadcast_nonblocking", lambda x, root: _sync(addp.broadcast_nonblocking(x, root))),
    ("broadcast_nonblocking_", lambda x, root: _sync(addp.broadcast_nonblocking_(x, root))),
]


@pytest.mark.parametrize("name,call", BROADCAST_VARIANTS, ids=[v[0] for v in BROADCAST_VARIANTS])
def test_broadcast_shape_or_root_differs(name, call):
    r, n = addp.rank(), addp.size()
    x = torch.full((r + 1,), float(r))
    pattern = _every_rank_listed("broadcast", [f"float32 [{j + 1}] from root_rank=0" for j in range(n)])
    _raises(lambda: call(x, 0), pattern)
    assert torch.equal(x, torch.full((r + 1,), float(r)))
    y = torch.full((3,), float(r))
    _raises(lambda: call(y, 1 if r == 0 else 0), r"rank 0: float32 \[3\] from root_rank=1")
    assert torch.equal(call(y, n - 1), torch.full((3,), float(n - 1)))
    _in_step()


@pytest.mark.parametrize("blocking", [True, False])
def test_allgather_trailing_dims_or_dtype_differ(blocking):
    r, n = addp.rank(), addp.size()
    gather = addp.allgather if blocking else (lambda x: _sync(addp.allgather_nonblocking(x)))
    x = torch.zeros(r + 1, 2, 3 if r == n - 1 else 2)  # dim 0 may differ; the last dim may not
    texts = [f"float32 with trailing shape [2, {3 if j == n - 1 else 2}]" for j in range(n)]
    _raises(lambda: gather(x), _every_rank_listed("allgather", texts))
    y = torch.zeros(2, dtype=torch.int32 if r == 0 else torch.float32)
    _raises(lambda: gather(y), r"rank 0: int32 with trailing shape \[\]; ranks? 1.*: float32")
    assert torch.equal(gather(torch.full((r + 1,), float(r))),
                       torch.cat([torch.full((j + 1,), float(j)) for j in range(n)]))  # fmt: skip
    _in_step()


@pytest.mark.parametrize("blocking", [True, False])
def test_reduce_scatter_shape_differs(blocking):
    r, n = addp.rank(), addp.size()
    scatter = addp.reduce_scatter if blocking else (
        lambda x, **k: _sync(addp.reduce_scatter_nonblocking(x, **k)))
    x = torch.ones(n + (1 if r == 1 else 0), 2)
    texts = [f"float32 [{n + (j == 1)}, 2] with op=sum, average=True" for j in range(n)]
    pattern = _every_rank_listed("reduce_scatter", texts)
    _raises(lambda: scatter(x), pattern)
    assert torch.equal(scatter(torch.ones(n, 2), average=False), torch.full((1, 2), float(n)))
    _in_step()


@pytest.mark.parametrize("blocking", [True, False])
def test_hierarchical_shape_differs(blocking):
    r, n = addp.rank(), addp.size()
    op = addp.hierarchical_neighbor_allreduce if blocking else (
        lambda x: _sync(addp.hierarchical_neighbor_allreduce_nonblocking(x)))
    x = torch.ones(3 if r == n - 1 else 2)  # with machines of two, the last machine disagrees inside
    pattern = _every_rank_listed("hierarchical_neighbor_allreduce",
                                 [f"float32 [{3 if j == n - 1 else 2}]" for j in range(n)])
    _raises(lambda: op(x), pattern)
    assert torch.equal(op(torch.ones(2)), torch.ones(2))
    _in_step()


def test_neighbour_same_bytes_other_shape_names_both():
    r, n = addp.rank(), addp.size()
    x = torch.zeros(3, 4) if r == 0 else torch.zeros(4, 3)  # 48 bytes on every rank
    in_ranks = set(addp.in_neighbor_ranks())
    if r == 0:
        senders = "|".join(map(str, in_ranks))
        _raises_plain = rf"rank ({senders}) sent a float32 \[4, 3\] tensor but this rank passed float32 \[3, 4\]"
    elif 0 in in_ranks:
        _raises_plain = r"rank 0 sent a float32 \[3, 4\] tensor but this rank passed float32 \[4, 3\]"
    else:
        assert torch.equal(addp.neighbor_allreduce(x), torch.zeros(4, 3))
        _raises_plain = None
    if _raises_plain is not None:
        with pytest.raises(addp.CommError, match=_raises_plain):
            addp.neighbor_allreduce(x)
    addp.barrier()
    _in_step()


def test_one_peer_step_with_a_larger_and_a_smaller_tensor():
    # One peer each way (a ring step): the exchange is a single Sendrecv, whose failures must
    # read like every other exchange's. Rank 0 passes 5 floats, the others 3: rank 1 is sent
    # more than it expects, rank 0 less.
    r, n = addp.rank(), addp.size()
    step = {"self_weight": 0.5, "src_weights": {(r - 1) % n: 0.5}, "dst_weights": {(r + 1) % n: 1.0}}
    x = torch.full((5,) if r == 0 else (3,), float(r))
    if r == 0:
        with pytest.raises(addp.CommError, match=rf"rank {n - 1} sent .*12 bytes where 20 were expected"):
            addp.neighbor_allreduce(x, **step)
    elif r == 1:
        with pytest.raises(addp.CommError, match="a neighbour sent a larger tensor than this rank expected"):
            addp.neighbor_allreduce(x, **step)
    else:
        assert torch.equal(addp.neighbor_allreduce(x, **step), torch.full((3,), r - 0.5))
    addp.barrier()
    y = torch.full((3,), float(r))
    assert torch.equal(addp.neighbor_allreduce(y, **step), torch.full((3,), (r + (r - 1) % n) / 2))
    _in_step()
