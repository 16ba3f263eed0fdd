"""Per-rank: BLUEFOG_NODES_PER_MACHINE=2 at 4 ranks (2 fake machines), hierarchical averaging,
machine topology and generators, and timeline activities (ASYNCDDP_TIMELINE is set by the caller)."""

from __future__ import annotations

import pytest
import torch

import asyncddp.compat.bluefog as bf
from asyncddp.compat import topology_util

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _bf():
    bf.init()
    yield


def test_fake_machines():
    assert bf.size() == 4 and bf.local_size() == 2 and bf.machine_size() == 2
    assert bf.local_rank() == bf.rank() % 2 and bf.machine_rank() == bf.rank() // 2
    assert bf.is_homogeneous()
    m = bf.machine_rank()
    assert bf.set_machine_topology(topology_util.ExponentialGraph(2))
    assert bf.in_neighbor_machine_ranks() == [1 - m] and bf.out_neighbor_machine_ranks() == [1 - m]
    assert not bf.is_machine_topo_weighted()


def test_allreduce_is_hierarchical_local_stays_inside_the_machine():
    r, m = bf.rank(), bf.machine_rank()
    x = torch.tensor([float(r), 10.0 * r], dtype=torch.float64)
    mine = [2 * m, 2 * m + 1]  # the two ranks of this fake machine
    expected = [sum(mine) / 2, 10.0 * sum(mine) / 2]
    assert bf.allreduce(x, is_hierarchical_local=True).tolist() == expected
    assert bf.synchronize(bf.allreduce_nonblocking(x, average=False, is_hierarchical_local=True)).tolist() == [
        float(sum(mine)), 10.0 * sum(mine)]
    y = x.clone()
    bf.allreduce_(y, is_hierarchical_local=True)
    assert y.tolist() == expected
    assert bf.allreduce(x).tolist() == [1.5, 15.0]  # the plain one still spans every machine


def test_hierarchical_neighbor_allreduce():
    r, m = bf.rank(), bf.machine_rank()
    x = torch.tensor([float(r), 2.0 * r], dtype=torch.float64)
    # Machine sums 1 and 5, means 0.5 and 2.5; uniform over the two machines: 1.5.
    assert bf.hierarchical_neighbor_allreduce(x).tolist() == [1.5, 3.0]
    out = bf.hierarchical_neighbor_allreduce(x, self_weight=0.75, src_machine_weights={1 - m: 0.25},
                                             dst_machine_weights={1 - m: 1.0})
    assert out.tolist() == ([1.0, 2.0] if m == 0 else [2.0, 4.0])
    gen = topology_util.GetExp2DynamicSendRecvMachineRanks(bf.size(), bf.local_size(), r, bf.local_rank())
    send, recv = next(gen)
    assert send == [1 - m] and recv == [1 - m]
    handle = bf.hierarchical_neighbor_allreduce_nonblocking(
        x, self_weight=0.5, src_machine_weights={recv[0]: 0.5}, dst_machine_weights=send)
    assert bf.synchronize(handle).tolist() == [1.5, 3.0]


def test_timeline_activities_are_recorded():
    assert bf.timeline_start_activity("grad.w", "COMPUTE")
    assert not bf.timeline_start_activity("grad.w", "AGAIN")  # one open activity per row
    assert bf.timeline_end_activity("grad.w")
    assert not bf.timeline_end_activity("grad.w")
    with bf.timeline_context("grad.b", f"FORWARD{bf.rank()}"):
        bf.neighbor_allreduce(torch.ones(3), name="nar.b")
