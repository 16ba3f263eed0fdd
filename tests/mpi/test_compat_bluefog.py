"""Per-rank checks of the BlueFog compatibility layer, with BlueFog's expected values.

Imported as ``asyncddp.compat.bluefog`` or, with ASYNCDDP_TEST_BLUEFOG_ALIAS=1, through the
installed alias ``import bluefog.torch as bf`` exactly as a BlueFog script would.
"""

from __future__ import annotations

import os
from fractions import Fraction

import pytest
import torch

if os.environ.get("ASYNCDDP_TEST_BLUEFOG_ALIAS") == "1":
    import asyncddp.compat

    asyncddp.compat.install_bluefog_alias()
    import bluefog.torch as bf
    from bluefog.common import topology_util
else:
    import asyncddp.compat.bluefog as bf
    from asyncddp.compat import topology_util

pytestmark = pytest.mark.timeout(60)

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def _bf():
    bf.init()
    yield
    bf.win_free()
    bf.set_topology(topology_util.ExponentialGraph(bf.size()))


def test_basics_and_default_topology():
    n, r = bf.size(), bf.rank()
    assert n == int(os.environ["OMPI_COMM_WORLD_SIZE"]) and r == int(os.environ["OMPI_COMM_WORLD_RANK"])
    assert bf.local_size() == n and bf.local_rank() == r
    assert bf.machine_size() == 1 and bf.machine_rank() == 0 and bf.is_homogeneous()
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), topology_util.ExponentialGraph(n))
    assert r not in bf.in_neighbor_ranks() and r not in bf.out_neighbor_ranks()
    assert isinstance(bf.mpi_threads_supported(), bool) and bf.nccl_built() in (True, False)
    if r == 0:  # local, not collective: one rank alone may ask
        assert bf.unified_mpi_window_model_supported() in (True, False)
    bf.set_skip_negotiate_stage(True)
    assert bf.get_skip_negotiate_stage()
    bf.set_skip_negotiate_stage(False)


def test_init_again_resets_the_topology():
    n = bf.size()
    bf.init(lambda size: topology_util.RingGraph(size, 2))
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), topology_util.RingGraph(n, 2))
    assert not bf.is_topo_weighted()
    bf.init()
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), topology_util.ExponentialGraph(n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_neighbor_allreduce_exact_uniform_average(dtype, dim):
    r = bf.rank()
    srcs = bf.in_neighbor_ranks()
    k = len(srcs) + 1  # exponential graph: same in-degree everywhere, so rank * k sums exactly
    x = torch.full([3] * dim, r * k, dtype=torch.float64).to(dtype)
    out = bf.neighbor_allreduce(x, name=f"avg.{dtype}.{dim}")
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, torch.full_like(x, r + sum(srcs)))


def test_neighbor_allreduce_exact_where_weighting_first_would_round():
    # (1 + 2^-52·j) summed over k ranks then divided by k is exact; multiplying by 1/k first is not.
    r, srcs = bf.rank(), bf.in_neighbor_ranks()
    k = len(srcs) + 1
    eps = 2.0 ** -52
    x = torch.tensor([k * (1.0 + eps * r)], dtype=torch.float64)
    expected = sum(k * (1.0 + eps * j) for j in [r, *srcs]) / k
    assert bf.neighbor_allreduce(x).item() == expected


def test_weighted_star_and_ring():
    n, r = bf.size(), bf.rank()
    x = torch.tensor([float(r)], dtype=torch.float64)
    assert bf.set_topology(topology_util.StarGraph(n), is_weighted=True)
    out = bf.neighbor_allreduce(x).item()
    assert out == pytest.approx((n - 1) / 2 if r == 0 else r * (1 - 1 / n), abs=1e-12)
    assert bf.set_topology(topology_util.RingGraph(n, 2))
    self_weight, src_weights = topology_util.GetRecvWeights(bf.load_topology(), r)
    out = bf.neighbor_allreduce(x, self_weight=self_weight, src_weights=src_weights).item()
    assert out == (0.5 * r + 0.5 * ((r - 1) % n) if n > 1 else float(r))


def test_dynamic_move_pattern_and_one_peer_schedule():
    n, r = bf.size(), bf.rank()
    x = torch.tensor([float(r), 10.0 * r])
    if n > 1:
        out = bf.neighbor_allreduce(x, self_weight=0.0, src_weights={(r - 1) % n: 1.0}, dst_weights=[(r + 1) % n])
        assert out.tolist() == [float((r - 1) % n), 10.0 * ((r - 1) % n)]
        # Weighted move: the sender scales by its dst weight, the receiver by its src weight.
        out = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={(r - 1) % n: 0.5},
                                    dst_weights={(r + 1) % n: 2.0})
        assert out.tolist() == [0.5 * r + ((r - 1) % n), 5.0 * r + 10.0 * ((r - 1) % n)]
    if n == 1:
        with pytest.raises(ValueError, match="no out-neighbour"):
            next(topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), r))
        return
    gen = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), r)
    for _ in range(3):
        send, recv = next(gen)
        weight = 1.0 / (len(recv) + 1)
        out = bf.neighbor_allreduce(x, self_weight=weight, src_weights={j: weight for j in recv}, dst_weights=send)
        assert torch.allclose(out, (x + sum(torch.tensor([float(j), 10.0 * j]) for j in recv)) * weight)


def test_mismatched_dynamic_pattern_raises_value_error_on_every_rank():
    n, r = bf.size(), bf.rank()
    if n < 3:
        pytest.skip("needs 3 ranks for a send/receive mismatch")
    with pytest.raises(ValueError, match="does not match"):
        bf.neighbor_allreduce(torch.ones(2), self_weight=0.5, src_weights={(r - 2) % n: 0.5},
                              dst_weights=[(r + 1) % n])
    with pytest.raises(ValueError, match="does not match"):
        handle = bf.neighbor_allreduce_nonblocking(torch.ones(2), self_weight=0.5, src_weights={(r - 2) % n: 0.5},
                                                   dst_weights=[(r + 1) % n])
        bf.synchronize(handle)
    # The job still works afterwards.
    assert bf.allreduce(torch.ones(1), average=False).item() == n


def test_neighbor_allgather_orders_and_sizes():
    n, r = bf.size(), bf.rank()
    x = torch.full((r + 1, 2), float(r))
    out = bf.neighbor_allgather(x)
    srcs = bf.in_neighbor_ranks()
    assert torch.equal(out, torch.cat([torch.full((j + 1, 2), float(j)) for j in srcs]) if srcs else out)
    assert out.shape[0] == sum(j + 1 for j in srcs)
    if n > 1:
        src = sorted({(r - 1) % n, (r + 1) % n}, reverse=True)
        dst = sorted({(r + 1) % n, (r - 1) % n})
        out = bf.neighbor_allgather(x, src_ranks=src, dst_ranks=dst)
        assert torch.equal(out, torch.cat([torch.full((j + 1, 2), float(j)) for j in src]))


def test_collectives_and_int_handles():
    n, r = bf.size(), bf.rank()
    x = torch.tensor([float(r), 1.0])
    assert bf.allreduce(x).tolist() == [(n - 1) / 2, 1.0]
    assert bf.allreduce(x, average=False, name="sum").tolist() == [n * (n - 1) / 2, float(n)]
    y = x.clone()
    bf.allreduce_(y, average=False)
    assert y.tolist() == [n * (n - 1) / 2, float(n)]
    assert bf.broadcast(x, root_rank=n - 1).tolist() == [float(n - 1), 1.0]
    assert bf.allgather(torch.full((r + 1,), r)).tolist() == [j for j in range(n) for _ in range(j + 1)]
    handles = [bf.allreduce_nonblocking(x, name="h1"), bf.broadcast_nonblocking(x, 0),
               bf.allgather_nonblocking(x), bf.neighbor_allreduce_nonblocking(x),
               bf.neighbor_allgather_nonblocking(x)]
    assert all(isinstance(h, int) for h in handles) and len(set(handles)) == 5
    assert bf.poll(handles[0]) in (True, False)
    results = [bf.synchronize(h) if i % 2 else bf.wait(h) for i, h in enumerate(handles)]
    assert results[0].tolist() == [(n - 1) / 2, 1.0] and results[1].tolist() == [0.0, 1.0]
    assert results[2].shape == (2 * n,)
    with pytest.raises(ValueError, match="unknown or was already synchronized"):
        bf.synchronize(handles[0])
    z = x.clone()
    bf.synchronize(bf.broadcast_nonblocking_(z, 0))
    assert z.tolist() == [0.0, 1.0]
    bf.barrier()
    # Every rank shares this one machine here, so the machine-local allreduce is the global one.
    assert bf.local_size() == n
    assert torch.equal(bf.allreduce(x, is_hierarchical_local=True), bf.allreduce(x))


def test_integer_allreduce_averages_without_wrapping():
    n, r = bf.size(), bf.rank()
    x = torch.tensor([100 - r, r, 1 + r], dtype=torch.int8)
    want = [round(Fraction(sum(v), n)) for v in zip(*[(100 - j, j, 1 + j) for j in range(n)])]
    assert bf.allreduce(x).tolist() == want
    y = x.clone()
    assert bf.allreduce_(y) is y and y.tolist() == want
    assert bf.synchronize(bf.allreduce_nonblocking(x)).tolist() == want
    z = x.clone()
    bf.synchronize(bf.allreduce_nonblocking_(z))
    assert z.tolist() == want


def test_windows_put_update_versions_and_set_topology():
    n, r = bf.size(), bf.rank()
    srcs, dsts = bf.in_neighbor_ranks(), bf.out_neighbor_ranks()
    x = torch.full((2, 3), float(r), dtype=torch.float64)
    assert bf.win_create(x, "w")
    assert bf.get_current_created_window_names() == ["w"]
    assert bf.set_topology(topology_util.RingGraph(n)) is False
    assert bf.get_win_version("w") == {j: 0 for j in srcs}
    # Neighbour buffers start as copies of the local tensor: the average is x itself.
    assert torch.equal(bf.win_update("w", clone=True), x)
    bf.barrier()
    assert bf.win_put(x, "w")
    bf.barrier()
    assert bf.get_win_version("w") == {j: 1 for j in srcs}
    out = bf.win_update("w")
    assert torch.allclose(out, torch.full_like(x, (r + sum(srcs)) / (len(srcs) + 1)), rtol=0, atol=1e-12)
    assert bf.get_win_version("w") == {j: 0 for j in srcs}
    bf.barrier()
    handle = bf.neighbor_win_put_nonblocking(x * 0 + 2 * r, "w", dst_weights={j: 0.5 for j in dsts})
    assert isinstance(handle, int) and bf.win_wait(handle)
    bf.barrier()
    collected = bf.win_update("w", self_weight=0.0, neighbor_weights={j: 1.0 for j in srcs}, clone=True)
    assert torch.allclose(collected, torch.full_like(x, float(sum(srcs))), atol=1e-12)
    assert bf.win_free("w") and bf.get_current_created_window_names() == []
    assert bf.set_topology(topology_util.RingGraph(n))


def test_window_get_accumulate_mutex_and_errors():
    n, r = bf.size(), bf.rank()
    srcs, dsts = bf.in_neighbor_ranks(), bf.out_neighbor_ranks()
    x = torch.tensor([float(r)])
    assert bf.win_create(x, "g", zero_init=True)
    assert bf.win_update("g", self_weight=0.0, neighbor_weights={j: 1.0 for j in srcs}, clone=True).item() == 0.0
    bf.barrier()
    handle = bf.win_get_nonblocking("g")
    bf.win_wait(handle)
    assert bf.get_win_version("g") == {j: 1 for j in srcs}
    got = bf.win_update("g", self_weight=0.0, neighbor_weights={j: 1.0 for j in srcs}, clone=True)
    assert got.item() == sum(srcs)
    bf.barrier()
    bf.win_free("g")
    assert bf.win_create(torch.zeros(1), "acc", zero_init=True)
    with bf.win_mutex("acc"):
        assert bf.win_accumulate(torch.tensor([1.0 + r]), "acc")
    bf.barrier()
    assert bf.win_update_then_collect("acc").item() == sum(1.0 + j for j in srcs)
    with pytest.raises(ValueError, match="no window named"):
        bf.win_update("nope")
    with pytest.raises(ValueError, match="not out-neighbours|not in|are not"):
        bf.win_put(torch.zeros(1), "acc", dst_weights={r: 1.0} if n == 1 else {j: 1.0 for j in range(n) if j not in dsts})
    bf.barrier()


def test_push_sum_with_associated_p_gives_the_exact_average():
    n, r = bf.size(), bf.rank()
    bf.set_topology(topology_util.ExponentialGraph(n))
    dsts = bf.out_neighbor_ranks()
    x = torch.tensor([float(r) * 3.0], dtype=torch.float64)
    bf.turn_on_win_ops_with_associated_p()
    try:
        bf.win_create(x, "ps", zero_init=True)
        for _ in range(40):
            weight = 1.0 / (len(dsts) + 1)
            bf.win_accumulate(x, "ps", self_weight=weight, dst_weights={j: weight for j in dsts}, require_mutex=True)
            bf.barrier()
            x = bf.win_update_then_collect("ps")
            bf.barrier()
        p = bf.win_associated_p("ps")
        assert (x / p).item() == pytest.approx(3.0 * (n - 1) / 2, abs=1e-9)
    finally:
        bf.turn_off_win_ops_with_associated_p()
    bf.win_free("ps")


def test_timeline_is_off_without_a_timeline_file():
    assert bf.timeline_start_activity("x", "COMPUTE") is False
    assert bf.timeline_end_activity("x") is False
    with bf.timeline_context("x", "COMPUTE"):
        pass


def test_errors_are_value_errors():
    with pytest.raises(ValueError, match="expects a torch.Tensor"):
        bf.neighbor_allreduce([1.0])
    with pytest.raises(ValueError):
        bf.broadcast(torch.ones(1), root_rank=bf.size())
