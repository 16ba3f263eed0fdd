"""Per-rank checks of neighbour averaging, collectives, handles and fusion (run at 1-4 ranks).

Expected values are computed here from first principles (offsets of the Exponential-2 graph,
closed-form sums), never by calling the code under test.
"""

import contextlib
import re
import threading
import time
import warnings
from fractions import Fraction

import networkx as nx
import pytest
import torch

import asyncddp as addp
from asyncddp.comm.engine import Op, get_engine

ALL_DTYPES = [
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.int32, torch.int64, torch.uint8, torch.int8, torch.int16,
]  # fmt: skip


def _exp2_in(rank, n):
    offsets = {2**k % n for k in range(n.bit_length()) if 2**k < n} - {0}
    return sorted((rank - o) % n for o in offsets)


def _value(r, shape=(3, 4)):
    """Rank r's test tensor (float64): distinct per rank and per element, small integers."""
    return torch.arange(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape) + 10 * r


def _uniform_expected(rank, n, dtype, shape=(3, 4)):
    members = [rank, *_exp2_in(rank, n)]
    if dtype.is_floating_point:
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        total = sum(_value(j, shape).to(dtype).to(work) for j in members)
        return (total / len(members)).to(dtype)
    total = sum(_value(j, shape).to(dtype).to(torch.int64) for j in members)
    return _nearest(total, len(members)).to(dtype)


def _nearest(total: torch.Tensor, count: int) -> torch.Tensor:
    """The integer average rule: total / count rounded to the nearest integer, ties to even."""
    return total.apply_(lambda t: round(Fraction(t, count)))


@contextlib.contextmanager
def _held(engine):
    """Ops issued in the block queue up behind a gate op and start together when it ends, so
    fusion sees all of them on every rank."""
    gate = threading.Event()
    op = Op("gate", "gate", lambda engine, batch: [gate.wait()], None, 0)
    handle = engine.call(op, blocking=False)
    try:
        yield
    finally:
        gate.set()
        handle.wait()


def test_thread_level_and_engine():
    from mpi4py import MPI

    assert MPI.Query_thread() == MPI.THREAD_MULTIPLE
    assert addp.comm_stats().threaded


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_static_exp2_uniform_average_every_dtype(dtype):
    r, n = addp.rank(), addp.size()
    x = _value(r).to(dtype)
    before = x.clone()
    out = addp.neighbor_allreduce(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, _uniform_expected(r, n, dtype)), (out, _uniform_expected(r, n, dtype))
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()


def test_exp2_four_ranks_formula_from_the_issue():
    r, n = addp.rank(), addp.size()
    if n != 4:
        pytest.skip("the closed form is for 4 ranks")
    out = addp.neighbor_allreduce(torch.tensor([float(r)], dtype=torch.float64))
    assert out.item() == (r + (r - 1) % 4 + (r - 2) % 4) / 3


def test_non_contiguous_and_scalar_and_3d():
    r, n = addp.rank(), addp.size()
    base = _value(r, (4, 3))
    x = base.t()  # non-contiguous view
    assert not x.is_contiguous()
    out = addp.neighbor_allreduce(x)
    expected = _uniform_expected(r, n, torch.float64, (4, 3)).t()
    assert torch.equal(out, expected)
    s = addp.neighbor_allreduce(torch.tensor(float(r)))
    members = [r, *_exp2_in(r, n)]
    assert s.shape == () and s.item() == pytest.approx(sum(members) / len(members), rel=1e-6)
    cube = _value(r, (2, 3, 2))
    assert torch.equal(addp.neighbor_allreduce(cube), _uniform_expected(r, n, torch.float64, (2, 3, 2)))


def test_precision_sum_then_divide():
    # BlueFog's precision test: tiny values survive because the sum is taken before dividing.
    r, n = addp.rank(), addp.size()
    x = torch.full((5,), 2.0**-256 * (r + 1), dtype=torch.float64)
    members = [r, *_exp2_in(r, n)]
    expected = sum(2.0**-256 * (j + 1) for j in members) / len(members)
    assert torch.equal(addp.neighbor_allreduce(x), torch.full((5,), expected, dtype=torch.float64))


def test_weighted_topology_and_explicit_weights():
    r, n = addp.rank(), addp.size()
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for i in range(n):  # ring: i -> i+1 with weight 0.25, self 0.75
        g.add_edge(i, i, weight=0.75 if n > 1 else 1.0)
        if n > 1:
            g.add_edge(i, (i + 1) % n, weight=0.25)
    assert addp.set_topology(g, is_weighted=True)
    try:
        x = torch.full((3,), float(r), dtype=torch.float64)
        out = addp.neighbor_allreduce(x)
        expected = 0.75 * r + 0.25 * ((r - 1) % n) if n > 1 else float(r)
        assert torch.equal(out, torch.full((3,), expected, dtype=torch.float64))
        if n > 1:
            out = addp.neighbor_allreduce(x, self_weight=0.5, src_weights={(r - 1) % n: 2.0})
            assert torch.equal(out, torch.full((3,), 0.5 * r + 2.0 * ((r - 1) % n), dtype=torch.float64))
    finally:
        addp.set_topology(__import__("asyncddp.topology.graphs", fromlist=["x"]).exponential_two_graph(n))


def test_dynamic_one_peer_dict_and_list():
    r, n = addp.rank(), addp.size()
    if n == 1:
        out = addp.neighbor_allreduce(torch.ones(2), self_weight=0.5, src_weights={}, dst_weights={})
        assert torch.equal(out, torch.full((2,), 0.5))  # no in-neighbours: self_weight * x
        return
    x = torch.full((4,), float(r + 1), dtype=torch.float64)
    prev, nxt = (r - 1) % n, (r + 1) % n
    # Sender scales by its dst weight (0.5) and receiver by its src weight (1.0).
    out = addp.neighbor_allreduce(x, self_weight=0.5, src_weights={prev: 1.0}, dst_weights={nxt: 0.5})
    assert torch.equal(out, torch.full((4,), 0.5 * (r + 1) + 0.5 * (prev + 1), dtype=torch.float64))
    out = addp.neighbor_allreduce(x, self_weight=0.25, src_weights={prev: 0.75}, dst_weights=[nxt])
    assert torch.equal(out, torch.full((4,), 0.25 * (r + 1) + 0.75 * (prev + 1), dtype=torch.float64))
    # Rank 0 talks to nobody this step; the others still pair up.
    if n >= 3:
        if r == 0:
            kw = dict(self_weight=1.0, src_weights={}, dst_weights={})
        elif r == 1:
            kw = dict(self_weight=0.5, src_weights={2: 0.5}, dst_weights={2: 1.0})
        elif r == 2:
            kw = dict(self_weight=0.5, src_weights={1: 0.5}, dst_weights={1: 1.0})
        else:
            kw = dict(self_weight=1.0, src_weights={}, dst_weights={})
        out = addp.neighbor_allreduce(x, **kw)
        want = {0: r + 1.0, 1: 2.5, 2: 2.5}.get(r, r + 1.0)
        assert torch.equal(out, torch.full((4,), want, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_peer_convex_step_on_every_path(dtype):
    """(1 - w)·x + w·r is computed in one pass (lerp): within an ulp or two of the formula on
    the small in-place path, the chunked path (> 4 MiB) and the out-of-place path."""
    r, n = addp.rank(), addp.size()
    if n == 1:
        pytest.skip("needs a neighbour")
    prev, nxt = (r - 1) % n, (r + 1) % n
    kw = dict(self_weight=0.3, src_weights={prev: 0.7}, dst_weights={nxt: 1.0})
    for count in (1000, 1_300_000):
        mine = torch.rand(count, generator=torch.Generator().manual_seed(r), dtype=torch.float64)
        theirs = torch.rand(count, generator=torch.Generator().manual_seed(prev), dtype=torch.float64)
        want = 0.3 * mine + 0.7 * theirs
        eps = torch.finfo(dtype).eps
        out = addp.neighbor_allreduce(mine.to(dtype), **kw)
        assert torch.allclose(out.double(), want, rtol=4 * eps, atol=0)
        x = mine.to(dtype)
        assert addp.neighbor_allreduce_(x, **kw) is x
        assert torch.allclose(x.double(), want, rtol=4 * eps, atol=0)
        assert torch.equal(x, out)  # both paths compute the same thing


def test_int_weighted_rounds_to_nearest():
    r, n = addp.rank(), addp.size()
    if n == 1:
        pytest.skip("needs a neighbour")
    x = torch.full((2,), 7 * (r + 1), dtype=torch.int32)
    prev, nxt = (r - 1) % n, (r + 1) % n
    out = addp.neighbor_allreduce(x, self_weight=1 / 3, src_weights={prev: 1 / 3}, dst_weights=[nxt])
    expected = round((7 * (r + 1) + 7 * (prev + 1)) / 3)  # weighted integer results round
    assert out.dtype == torch.int32 and out.tolist() == [expected, expected]


def test_neighbor_allgather_orders_and_sizes():
    r, n = addp.rank(), addp.size()
    x = torch.full((r + 1, 2), float(r))
    out = addp.neighbor_allgather(x)
    ins = _exp2_in(r, n)
    expected = torch.cat([torch.full((j + 1, 2), float(j)) for j in ins]) if ins else torch.empty(0, 2)
    assert torch.equal(out, expected)
    if n >= 3:
        # Explicit ranks: everyone gathers from the two previous ranks, in descending order.
        srcs = [(r - 2) % n, (r - 1) % n][::-1]
        dsts = [(r + 1) % n, (r + 2) % n]
        out = addp.neighbor_allgather(x, src_ranks=srcs, dst_ranks=dsts)
        assert torch.equal(out, torch.cat([torch.full((j + 1, 2), float(j)) for j in srcs]))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_collectives_every_dtype(dtype):
    r, n = addp.rank(), addp.size()
    x = (torch.arange(6, dtype=torch.float64).reshape(2, 3) + r + 1).to(dtype)
    base = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    total = n * base + n * (n + 1) / 2  # exact sum over ranks of base + r + 1
    if dtype.is_floating_point:
        work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        want_sum = sum((base + j + 1).to(dtype).to(work) for j in range(n))
        assert torch.equal(addp.allreduce(x, average=False), want_sum.to(dtype))
        assert torch.equal(addp.allreduce(x), (want_sum / n).to(dtype))
    else:
        want = total.to(torch.int64)
        assert torch.equal(addp.allreduce(x, average=False).to(torch.int64), want.to(dtype).to(torch.int64))
        assert torch.equal(addp.allreduce(x), _nearest(want, n).to(dtype))
    assert torch.equal(addp.allreduce(x, op="max"), (base + n).to(dtype))
    assert torch.equal(addp.allreduce(x, op="min"), (base + 1).to(dtype))
    b = addp.broadcast(x, root_rank=n - 1)
    assert torch.equal(b, (base + n).to(dtype)) and b.data_ptr() != x.data_ptr()
    g = addp.allgather(torch.full((r + 1, 2), r, dtype=torch.float64).to(dtype))
    assert torch.equal(g, torch.cat([torch.full((j + 1, 2), j, dtype=torch.float64) for j in range(n)]).to(dtype))
    rows = 2 * n + 1
    m = (torch.arange(rows * 2, dtype=torch.float64).reshape(rows, 2) + r).to(dtype)
    rs = addp.reduce_scatter(m, average=False)
    full = sum((torch.arange(rows * 2, dtype=torch.float64).reshape(rows, 2) + j) for j in range(n))
    mine = torch.tensor_split(full, n)[r]
    if dtype.is_floating_point:
        assert torch.allclose(rs.double(), mine, rtol=1e-2)
    else:
        assert torch.equal(rs, mine.to(dtype))


INT_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
# Near the top of each integer range, so that a sum over ranks in the tensor's own dtype wraps;
# for int64, past float64's 2^53, so that a float64 sum would round.
_BIG = {torch.int8: 100, torch.uint8: 200, torch.int16: 20000, torch.int32: 2**30 + 7, torch.int64: 2**53 + 1}


def _int_columns(r, dtype):
    """Rank r's values: ties both ways, equal values near the top of the range, and values that
    differ per rank near both ends."""
    big = _BIG[dtype]
    if dtype == torch.uint8:
        return [r, 1 + r, big, big - r]
    return [r, 1 + r, -1 - r, big, big - r, -big + r]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integer_averages_are_exact_in_every_collective(dtype):
    r, n = addp.rank(), addp.size()
    x = torch.tensor(_int_columns(r, dtype), dtype=dtype)
    columns = zip(*[_int_columns(j, dtype) for j in range(n)])
    want = torch.tensor([round(Fraction(sum(c), n)) for c in columns], dtype=dtype)
    assert torch.equal(addp.allreduce(x), want)
    assert torch.equal(addp.allreduce(x, local=True), want)  # one machine: local is the world
    y = x.clone()
    ptr = y.data_ptr()
    assert addp.allreduce_(y) is y and y.data_ptr() == ptr and torch.equal(y, want)
    assert torch.equal(addp.synchronize(addp.allreduce_nonblocking(x)), want)
    z = x.clone()
    assert addp.synchronize(addp.allreduce_nonblocking_(z)) is z and torch.equal(z, want)
    with _held(get_engine()):  # fused into one buffer: the same rule
        handles = [addp.allreduce_nonblocking(x + 0) for _ in range(3)]
    assert all(torch.equal(addp.synchronize(h), want) for h in handles)
    rows = x.repeat(n, 1)  # rank r keeps row r: the average of every rank's row r
    assert torch.equal(addp.reduce_scatter(rows), want.unsqueeze(0))
    assert torch.equal(addp.synchronize(addp.reduce_scatter_nonblocking(rows)), want.unsqueeze(0))


def test_integer_average_repro_from_the_issue():
    r, n = addp.rank(), addp.size()
    if n == 2:  # the neighbour average and the allreduce average agree
        x = torch.tensor([r, 1 + r, -1 - r, 64 + 63 * r], dtype=torch.int8)
        assert addp.allreduce(x).tolist() == [0, 2, -2, 96]
        assert addp.neighbor_allreduce(x).tolist() == [0, 2, -2, 96]
    if n == 3:
        for dtype, value in ((torch.int8, 100), (torch.uint8, 200), (torch.int16, 20000),
                             (torch.int32, 2**30 + 7)):
            equal = torch.full((2,), value, dtype=dtype)
            assert addp.allreduce(equal).tolist() == [value] * 2
            assert addp.reduce_scatter(equal.repeat(3)).tolist() == [value] * 2


def test_bool_broadcast_and_allgather():
    r, n = addp.rank(), addp.size()
    x = torch.tensor([r % 2 == 0, True])
    assert torch.equal(addp.broadcast(x, 0), torch.tensor([True, True]))
    assert addp.allgather(x).shape == (2 * n,)


def test_in_place_variants():
    r, n = addp.rank(), addp.size()
    x = torch.full((3,), float(r))
    ptr = x.data_ptr()
    assert addp.allreduce_(x) is x and x.data_ptr() == ptr
    assert torch.equal(x, torch.full((3,), (n - 1) / 2))
    y = torch.full((3,), float(r), dtype=torch.float64)
    addp.neighbor_allreduce_(y)
    members = [r, *_exp2_in(r, n)]
    assert torch.equal(y, torch.full((3,), sum(members) / len(members), dtype=torch.float64))
    z = torch.full((2,), float(r))
    addp.broadcast_(z, 0)
    assert torch.equal(z, torch.zeros(2))
    w = torch.full((2,), float(r))
    h = addp.neighbor_allreduce_nonblocking_(w)
    assert addp.synchronize(h) is w
    if n > 1:  # weighted in place, written straight into the caller's memory
        v = torch.full((5,), float(r + 1))
        ptr = v.data_ptr()
        addp.neighbor_allreduce_(v, self_weight=0.25, src_weights={(r - 1) % n: 0.75}, dst_weights=[(r + 1) % n])
        assert v.data_ptr() == ptr and torch.equal(v, torch.full((5,), 0.25 * (r + 1) + 0.75 * ((r - 1) % n + 1)))
        q = torch.arange(6, dtype=torch.int64).reshape(2, 3).t()  # non-contiguous, integer: copied back
        addp.neighbor_allreduce_(q, self_weight=1.0, src_weights={(r - 1) % n: 0.0}, dst_weights=[(r + 1) % n])
        assert torch.equal(q, torch.arange(6).reshape(2, 3).t())


def test_lean_blocking_paths_write_in_place_and_keep_the_checks():
    r, n = addp.rank(), addp.size()
    members = [r, *_exp2_in(r, n)]
    # Integer in place on a contiguous tensor: the result lands in the caller's memory.
    k = torch.full((4,), 3 * r, dtype=torch.int32)
    ptr = k.data_ptr()
    assert addp.neighbor_allreduce_(k) is k and k.data_ptr() == ptr
    assert k.tolist() == [round(Fraction(sum(3 * j for j in members), len(members)))] * 4
    # Direct broadcast_/allreduce_ into the tensor's own memory, every MPI-native dtype path.
    for dtype in (torch.float64, torch.int64, torch.uint8, torch.bool, torch.float16):
        b = torch.full((3,), r + 1, dtype=dtype)
        ptr = b.data_ptr()
        assert addp.broadcast_(b, n - 1) is b and b.data_ptr() == ptr
        assert torch.equal(b, torch.full((3,), n, dtype=dtype))
    a = torch.full((2, 2), r + 1, dtype=torch.int64)
    assert addp.allreduce_(a) is a and torch.equal(a, torch.full((2, 2), round(Fraction(n * (n + 1) // 2, n))))
    # A cached dynamic plan never lets a bool rank key through the checks.
    if n > 1:
        peer = (r + 1) % n
        prev = (r - 1) % n
        kw = dict(self_weight=0.5, src_weights={prev: 0.5}, dst_weights={peer: 1.0})
        for _ in range(2):  # the second call hits the cached plan
            y = torch.full((2,), float(r))
            addp.neighbor_allreduce_(y, **kw)
            assert torch.equal(y, torch.full((2,), 0.5 * r + 0.5 * prev))
        if peer == 1:
            with pytest.raises(addp.CommError, match="not in the job"):
                addp.neighbor_allreduce(torch.ones(2), self_weight=0.5, src_weights={prev: 0.5}, dst_weights={True: 1.0})
    # Scalars take the lean path too.
    s = torch.tensor(float(r))
    assert addp.neighbor_allreduce_(s).item() == pytest.approx(sum(members) / len(members))


def test_nonblocking_interleaved_out_of_order():
    r, n = addp.rank(), addp.size()
    xs = [torch.full((1000,), float(r + k)) for k in range(6)]
    handles = [
        addp.neighbor_allreduce_nonblocking(xs[0]),
        addp.allreduce_nonblocking(xs[1], average=False),
        addp.broadcast_nonblocking(xs[2], 0),
        addp.allgather_nonblocking(xs[3][:2]),
        addp.neighbor_allreduce_nonblocking(xs[4], name="second"),
        addp.barrier_nonblocking(),
    ]
    busy = torch.randn(200, 200) @ torch.randn(200, 200)  # Python keeps computing meanwhile
    assert busy.shape == (200, 200)
    members = [r, *_exp2_in(r, n)]
    assert addp.synchronize(handles[4])[0].item() == pytest.approx(sum(j + 4 for j in members) / len(members))
    assert addp.poll(handles[0])  # program order: the earlier op is over too
    assert addp.synchronize(handles[1])[0].item() == sum(j + 1 for j in range(n))
    assert addp.wait(handles[2])[0].item() == 2.0
    assert addp.synchronize(handles[3]).tolist() == [float(j + 3) for j in range(n) for _ in range(2)]
    assert addp.synchronize(handles[5]) is None
    assert addp.synchronize(handles[0])[0].item() == pytest.approx(sum(members) / len(members))


def test_ops_progress_while_python_computes():
    import time

    r, n = addp.rank(), addp.size()
    h = addp.neighbor_allreduce_nonblocking(torch.full((1 << 18,), float(r)))
    deadline = time.monotonic() + 30
    spins = 0
    while not addp.poll(h) and time.monotonic() < deadline:
        spins = (spins * 31 + 7) % 1000003  # pure Python: no MPI call from this thread
    assert addp.poll(h), "the op made no progress without a synchronize() call"
    members = [r, *_exp2_in(r, n)]
    assert addp.synchronize(h)[0].item() == pytest.approx(sum(members) / len(members))


def test_fusion_equal_results_and_fewer_messages():
    r, n = addp.rank(), addp.size()
    engine = get_engine()
    tensors = [torch.full((17 + k,), float(r * 100 + k)) for k in range(24)]
    results, messages = {}, {}
    for threshold in (0, 8 * 1024 * 1024):
        engine.threshold = threshold
        before = addp.comm_stats()
        with _held(engine):
            hs = [addp.neighbor_allreduce_nonblocking(t) for t in tensors]
            hs += [addp.allreduce_nonblocking(t) for t in tensors]
        results[threshold] = [addp.synchronize(h) for h in hs]
        after = addp.comm_stats()
        messages[threshold] = after.num_messages - before.num_messages
        batches = after.num_batches - before.num_batches
        assert batches == 1 + (48 if threshold == 0 else 2)  # the gate is a batch of its own
    engine.threshold = 8 * 1024 * 1024
    for a, b in zip(results[0], results[8 * 1024 * 1024]):
        assert torch.equal(a, b)
    members = [r, *_exp2_in(r, n)]
    for k in range(24):
        assert torch.equal(results[0][k], torch.full((17 + k,), sum(j * 100 + k for j in members) / len(members)))
    assert messages[8 * 1024 * 1024] * 4 <= messages[0], messages


def test_errors_are_clear():
    r, n = addp.rank(), addp.size()
    with pytest.raises(addp.CommError, match="together"):
        addp.neighbor_allreduce(torch.ones(2), self_weight=0.5)
    with pytest.raises(addp.CommError, match="not in the job"):
        addp.neighbor_allreduce(torch.ones(2), self_weight=0.5, src_weights={}, dst_weights={n + 3: 1.0})
    with pytest.raises(addp.CommError, match="root_rank"):
        addp.broadcast(torch.ones(2), root_rank=n)
    with pytest.raises(addp.CommError, match="op="):
        addp.allreduce(torch.ones(2), op="mean")
    with pytest.raises(addp.CommError, match="torch.Tensor"):
        addp.allreduce([1.0, 2.0])
    with pytest.raises(addp.CommError, match="not supported"):
        addp.allreduce(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(addp.CommError, match="handle"):
        addp.synchronize(42)
    for bad in (float("nan"), float("-inf"), "half"):
        with pytest.raises(addp.CommError, match=r"self_weight=.* is not a weight: weights must be finite"):
            addp.neighbor_allreduce(torch.ones(2), self_weight=bad, src_weights={}, dst_weights={})
    if n > 1:
        src = _exp2_in(r, n)[0]
        with pytest.raises(addp.CommError, match=rf"src_weights\[{src}\]=inf is not a weight"):
            addp.neighbor_allreduce(torch.ones(2), self_weight=0.5, src_weights={src: float("inf")})
    strangers = sorted(set(range(n)) - set(_exp2_in(r, n)) - {r})
    if strangers:
        with pytest.raises(addp.CommError, match="not in-neighbours"):
            addp.neighbor_allreduce(torch.ones(2), self_weight=0.5, src_weights={strangers[0]: 0.5})


def test_mismatched_dynamic_pattern_raises_not_hangs():
    r, n = addp.rank(), addp.size()
    if n == 1:
        pytest.skip("needs two ranks")
    # Rank 0 sends to 1, but rank 1 expects nothing.
    kw = dict(self_weight=1.0, src_weights={}, dst_weights={1: 1.0} if r == 0 else {})
    with pytest.raises(addp.CommError, match=r"0->1 \(sent but not expected\)"):
        addp.neighbor_allreduce(torch.ones(3), **kw)
    # The job is still healthy afterwards.
    assert addp.allreduce(torch.ones(1), average=False).item() == n


def test_allgather_trailing_shape_mismatch():
    r, n = addp.rank(), addp.size()
    if n == 1:
        pytest.skip("needs two ranks")
    x = torch.zeros(1, 3 if r == 0 else 2)
    with pytest.raises(addp.CommError, match="trailing shape"):
        addp.allgather(x)


def test_allgather_into_out():
    r, n = addp.rank(), addp.size()
    x = torch.full((r + 1, 2), float(r))
    want = torch.cat([torch.full((j + 1, 2), float(j)) for j in range(n)])
    total = n * (n + 1) // 2
    out = torch.full((total, 2), -1.0)
    got = addp.allgather(x, out=out)
    assert got is out and torch.equal(out, want)  # written in place: no new tensor
    # A strided out (every other row of a bigger tensor) is filled through a copy.
    big = torch.full((2 * total, 2), -1.0)
    assert torch.equal(addp.allgather(x, out=big[::2]), want)
    assert torch.equal(big[1::2], torch.full((total, 2), -1.0))
    # Nonblocking: the handle's result is out; bfloat16 moves as bytes straight into out.
    out16 = torch.zeros((total, 2), dtype=torch.bfloat16)
    handle = addp.allgather_nonblocking(x.to(torch.bfloat16), out=out16)
    assert addp.synchronize(handle) is out16 and torch.equal(out16, want.to(torch.bfloat16))
    # Large enough for a huge-page result buffer when no out is given: same values.
    wide = torch.arange(600_000, dtype=torch.float32) + r
    gathered = addp.allgather(wide)
    assert torch.equal(gathered, torch.cat([torch.arange(600_000, dtype=torch.float32) + j for j in range(n)]))


def test_allgather_bad_out_raises_on_every_rank():
    r, n = addp.rank(), addp.size()
    x = torch.full((2,), float(r))
    if n == 1:
        with pytest.raises(addp.CommError, match=r"out= is a torch.float32 tensor of shape \[3\]"):
            addp.allgather(x, out=torch.empty(3))
        return
    # Only rank 0's out is wrong (one row short); the others learn it from the header.
    out = torch.empty(2 * n - (1 if r == 0 else 0))
    pattern = r"out= is a torch.float32 tensor of shape" if r == 0 else r"rank\(s\) \[0\] passed an out="
    with pytest.raises(addp.CommError, match=pattern):
        addp.allgather(x, out=out)
    with pytest.raises(addp.CommError, match="out= is a torch.float64 tensor"):
        addp.allgather(x, out=torch.empty(2 * n, dtype=torch.float64))
    # The job is still healthy afterwards.
    assert torch.equal(addp.allgather(x, out=torch.empty(2 * n)), torch.arange(n).repeat_interleave(2).float())


def _agreed(flag: bool) -> list[bool]:
    """Every rank's ``flag``, as every rank sees them."""
    return [bool(v) for v in addp.allgather(torch.tensor([int(flag)])).tolist()]


def test_set_topology_settles_ops_in_flight_and_every_rank_agrees():
    from asyncddp.topology.graphs import exponential_two_graph, ring_graph

    r, n = addp.rank(), addp.size()
    graphs = [ring_graph(n), exponential_two_graph(n)]
    # The issue's repro, in a loop: a nonblocking allreduce in flight, one rank late.
    for k in range(6):
        handle = addp.allreduce_nonblocking(torch.ones(200_000))
        if r == 1:
            time.sleep(0.02)
        graph = graphs[k % 2]
        assert _agreed(addp.set_topology(graph)) == [True] * n
        assert addp.load_topology() is graph
        assert torch.equal(addp.synchronize(handle), torch.ones(200_000))
        x = torch.full((3,), float(r), dtype=torch.float64)
        members = [r, *sorted(j for j in graph.predecessors(r) if j != r)]
        want = sum(members) / len(members)
        assert torch.equal(addp.neighbor_allreduce(x), torch.full((3,), want, dtype=torch.float64))
    # A paused queue (BlueFog's suspend) is resumed and run first, not left waiting.
    engine = get_engine()
    engine.pause()
    handle = addp.neighbor_allreduce_nonblocking(torch.full((2,), float(r)))
    assert addp.set_topology(graphs[0]) is True
    members = [r, *sorted(j for j in graphs[1].predecessors(r) if j != r)]  # issued before the change
    assert torch.equal(addp.synchronize(handle), torch.full((2,), sum(members) / len(members)))
    addp.set_topology(exponential_two_graph(n))


def test_set_topology_refuses_on_every_rank_together():
    from asyncddp.topology.graphs import exponential_two_graph, ring_graph, star_graph

    r, n = addp.rank(), addp.size()
    before = addp.load_topology()
    if n > 2:  # rank 0 alone passes another graph: every rank raises, nobody changes
        mine = star_graph(n) if r == 0 else exponential_two_graph(n)
        with pytest.raises(addp.TopologyError, match=r"different graphs .*rank\(s\) \[1"):
            addp.set_topology(mine)
        assert addp.load_topology() is before
    if n > 1:  # one rank's graph is invalid: it says why, the others name it
        mine = nx.DiGraph([(0, n + 5)]) if r == n - 1 else ring_graph(n)
        pattern = "has nodes" if r == n - 1 else rf"rank\(s\) \[{n - 1}\] passed an invalid graph as the topology"
        with pytest.raises(addp.TopologyError, match=pattern):
            addp.set_topology(mine)
        assert addp.load_topology() is before
    for bad in (float("nan"), float("inf"), "0.5"):
        weighted = ring_graph(n)
        weighted.add_edges_from((j, j) for j in range(n))
        nx.set_edge_attributes(weighted, 0.5, "weight")
        weighted.add_edge(0, 0, weight=bad)
        with pytest.raises(addp.TopologyError, match=r"edge 0->0 has weight .*must be finite numbers"):
            addp.set_topology(weighted, is_weighted=True)
    assert addp.set_topology(weighted) is True  # unweighted: the weights are not read
    assert addp.set_topology(before) is True
    # The job is in step afterwards.
    assert torch.equal(addp.allreduce(torch.ones(2), average=False), torch.full((2,), float(n)))


def test_set_topology_warns_about_negative_weights_and_separate_groups():
    from asyncddp.topology.graphs import exponential_two_graph

    r, n = addp.rank(), addp.size()
    if n == 1:
        pytest.skip("needs two ranks")
    lonely = nx.DiGraph()
    lonely.add_nodes_from(range(n))  # every rank alone: averaging never mixes anything
    negative = nx.DiGraph()
    negative.add_nodes_from(range(n))
    for j in range(n):
        negative.add_edge(j, j, weight=1.5)
        negative.add_edge((j - 1) % n, j, weight=-0.5)
    for graph, weighted, pattern in ((lonely, False, rf"disconnected \({n} separate groups"),
                                     (negative, True, "1 negative weight|negative weight")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert addp.set_topology(graph, is_weighted=weighted) is True
        texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        if r == 0:
            assert any(re.search(pattern, t) for t in texts), texts
        else:
            assert texts == []
    assert addp.set_topology(exponential_two_graph(n))


def test_shape_and_dtype_mismatch_between_neighbours_last():
    # Kept last: a failed exchange may leave messages the next op would have to skip.
    r, n = addp.rank(), addp.size()
    if n == 1:
        pytest.skip("needs two ranks")
    senders_to_me = set(_exp2_in(r, n))
    x = torch.zeros(4, dtype=torch.int32 if r == 0 else torch.float32)
    if r == 0 or 0 in senders_to_me:
        with pytest.raises(addp.CommError, match="shape or dtype"):
            addp.neighbor_allreduce(x)
    else:
        addp.neighbor_allreduce(x)
    addp.barrier()
    y = torch.zeros(5 if r == 0 else 3)
    if r == 0 or 0 in senders_to_me:
        with pytest.raises(addp.CommError, match="shape|larger"):
            addp.neighbor_allreduce(y)
    else:
        addp.neighbor_allreduce(y)
    addp.barrier()
