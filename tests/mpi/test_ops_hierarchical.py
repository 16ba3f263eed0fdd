"""Hierarchical neighbour averaging with ASYNCDDP_RANKS_PER_MACHINE=2 (machines of two ranks)."""

from fractions import Fraction

import pytest
import torch

import asyncddp as addp


def _machine_means(n):
    machines = [list(range(m, min(m + 2, n))) for m in range(0, n, 2)]
    return [sum(ms) / len(ms) for ms in machines]


def test_uniform_over_machines():
    r, n = addp.rank(), addp.size()
    means = _machine_means(n)
    assert addp.machine_size() == len(means)
    out = addp.hierarchical_neighbor_allreduce(torch.full((3, 2), float(r), dtype=torch.float64))
    # Exp-2 over 2 machines: each machine averages its mean with the other's.
    expected = sum(means) / len(means)
    assert torch.equal(out, torch.full((3, 2), expected, dtype=torch.float64))


def test_weighted_machine_step_nonblocking_and_in_place():
    r, n = addp.rank(), addp.size()
    means = _machine_means(n)
    me, other = addp.machine_rank(), 1 - addp.machine_rank()
    kw = dict(self_weight=0.75, src_machine_weights={other: 0.25}, dst_machine_weights={other: 1.0})
    x = torch.full((4,), float(r))
    h = addp.hierarchical_neighbor_allreduce_nonblocking(x, **kw)
    expected = 0.75 * means[me] + 0.25 * means[other]
    assert torch.equal(addp.synchronize(h), torch.full((4,), expected))
    y = torch.full((4,), float(r), dtype=torch.float64)
    assert addp.hierarchical_neighbor_allreduce_(y, **kw) is y
    assert torch.equal(y, torch.full((4,), expected, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.int64])
def test_other_dtypes(dtype):
    r, n = addp.rank(), addp.size()
    out = addp.hierarchical_neighbor_allreduce(torch.full((5,), 4 * r, dtype=dtype))
    expected = 4 * sum(_machine_means(n)) / len(_machine_means(n))
    assert out.dtype == dtype
    assert torch.equal(out, torch.full((5,), round(expected) if not dtype.is_floating_point else expected, dtype=dtype))


def test_integer_averages_across_machines_never_wrap():
    r, n = addp.rank(), addp.size()
    # Large enough that allreduce and reduce_scatter run as rings between the machines: the ring
    # sums the int64 work buffer too.
    x = torch.full((300_000,), 100 - r, dtype=torch.int8)
    want = round(Fraction(sum(100 - j for j in range(n)), n))
    assert torch.equal(addp.allreduce(x), torch.full_like(x, want))
    assert torch.equal(addp.reduce_scatter(x), torch.full((300_000 // n,), want, dtype=torch.int8))
    machines = [[100 - j for j in range(m, min(m + 2, n))] for m in range(0, n, 2)]
    means = [Fraction(sum(ms), len(ms)) for ms in machines]
    out = addp.hierarchical_neighbor_allreduce(torch.full((3,), 100 - r, dtype=torch.int8))
    assert out.tolist() == [round(sum(means) / len(means))] * 3


def test_machine_weights_must_name_machines():
    with pytest.raises(addp.CommError, match="not in the job"):
        addp.hierarchical_neighbor_allreduce(
            torch.ones(2), self_weight=0.5, src_machine_weights={7: 0.5}, dst_machine_weights={7: 1.0}
        )


def _messages(op):
    before = addp.comm_stats().num_messages
    result = op()
    return result, addp.comm_stats().num_messages - before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_large_allreduce_across_machines_runs_a_ring_and_is_exact(dtype):
    from asyncddp.comm.ring import MIN_CHUNK_BYTES

    r, n = addp.rank(), addp.size()
    count = n * MIN_CHUNK_BYTES // dtype.itemsize + 5  # chunks of unequal length
    base = (torch.arange(count) % 1000).to(dtype)
    out, messages = _messages(lambda: addp.allreduce(base + r, average=False))
    assert torch.equal(out, base * n + sum(range(n)))
    assert messages == 1 + 2 * (n - 1)  # the shape check, then the ring's steps
    x = base + r
    _, messages = _messages(lambda: addp.allreduce_(x, op="max"))
    assert torch.equal(x, base + n - 1) and messages == 1 + 2 * (n - 1)
    small = torch.full((count // n,), float(r), dtype=dtype)
    out, messages = _messages(lambda: addp.allreduce(small, average=False))
    assert torch.equal(out, torch.full_like(small, sum(range(n)))) and messages == 2  # MPI's Allreduce


def test_large_average_is_the_same_on_every_rank():
    r, n = addp.rank(), addp.size()
    x = torch.rand(1 << 20, generator=torch.Generator().manual_seed(r))
    y = addp.allreduce(x)
    gathered = addp.allgather(y.view(1, -1))
    assert all(torch.equal(gathered[0], gathered[k]) for k in range(n))
    assert torch.allclose(y, addp.allgather(x.view(1, -1)).double().mean(0).float(), atol=1e-6)


def test_large_reduce_scatter_and_allgather_across_machines_run_rings():
    from asyncddp.comm.ring import MIN_CHUNK_BYTES

    r, n = addp.rank(), addp.size()
    rows = n * MIN_CHUNK_BYTES // (4 * 8) + 3  # float32 rows of 8: blocks of unequal length
    x = (torch.arange(rows * 8, dtype=torch.float32).view(rows, 8) % 100) + r
    block, messages = _messages(lambda: addp.reduce_scatter(x, average=False))
    expected = torch.tensor_split((torch.arange(rows * 8, dtype=torch.float32).view(rows, 8) % 100) * n
                                  + sum(range(n)), n)[r]
    assert torch.equal(block, expected)
    assert messages == 1 + (n - 1)  # the shape check, then the ring's steps
    mine = torch.full((MIN_CHUNK_BYTES // 8 + r, 2), float(r), dtype=torch.float64)  # unequal dim 0
    gathered, messages = _messages(lambda: addp.allgather(mine))
    assert torch.equal(gathered, torch.cat([torch.full((MIN_CHUNK_BYTES // 8 + j, 2), float(j),
                                                       dtype=torch.float64) for j in range(n)]))
    assert messages == 1 + (n - 1)  # the header round, then the ring's steps
    out = torch.empty_like(gathered)
    assert addp.allgather(mine, out=out) is out and torch.equal(out, gathered)


def test_set_machine_topology_settles_ops_and_every_rank_agrees():
    import time

    import networkx as nx

    from asyncddp.topology.graphs import exponential_two_graph

    r, n = addp.rank(), addp.size()
    means = _machine_means(n)
    graph = exponential_two_graph(addp.machine_size())
    for _ in range(3):
        handle = addp.hierarchical_neighbor_allreduce_nonblocking(torch.full((4,), float(r)))
        if r == 1:
            time.sleep(0.02)
        assert addp.set_machine_topology(graph) is True
        assert addp.load_machine_topology() is graph
        assert torch.equal(addp.synchronize(handle), torch.full((4,), sum(means) / len(means)))
    # Machine 0's ranks alone pass a graph without edges: every rank raises, nothing changes.
    lonely = nx.DiGraph()
    lonely.add_nodes_from(range(addp.machine_size()))
    with pytest.raises(addp.TopologyError, match="different graphs as the machine topology"):
        addp.set_machine_topology(lonely if addp.machine_rank() == 0 else graph)
    assert addp.load_machine_topology() is graph
