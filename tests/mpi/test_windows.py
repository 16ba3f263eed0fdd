"""One-sided windows under mpirun: put/get/accumulate/update, versions, mutex, push-sum, async."""

import time

import networkx as nx
import numpy as np
import pytest
import torch
from mpi4py import MPI

import asyncddp as addp
from asyncddp.comm.context import get_context
from asyncddp.topology import exponential_two_graph

COMM = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _clean():
    addp.set_topology(exponential_two_graph(addp.size()))
    yield
    addp.win_free()
    addp.turn_off_win_ops_with_associated_p()
    assert addp.set_topology(exponential_two_graph(addp.size()))


def _ranks():
    return addp.rank(), addp.size(), addp.in_neighbor_ranks(), addp.out_neighbor_ranks()


def test_create_then_update_is_identity_and_put_then_update_averages():
    r, n, ins, outs = _ranks()
    x = torch.full((2, 3), float(r + 1), dtype=torch.float64)
    assert addp.win_create(x, "w")
    assert addp.get_win_version("w") == {j: 0 for j in ins}
    # Buffers start as copies of the local tensor: averaging changes nothing.
    assert torch.equal(addp.win_update("w"), torch.full((2, 3), float(r + 1), dtype=torch.float64))
    COMM.Barrier()  # nobody puts before every rank has looked at its fresh window
    addp.win_put(x, "w")
    COMM.Barrier()
    assert addp.get_win_version("w") == {j: 1 for j in ins}
    out = addp.win_update("w")
    assert out is x
    expected = (r + 1 + sum(j + 1 for j in ins)) / (len(ins) + 1)
    assert torch.allclose(x, torch.full((2, 3), expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert addp.get_win_version("w") == {j: 0 for j in ins}


def test_put_weights_self_weight_and_versions_count():
    r, n, ins, outs = _ranks()
    x = torch.tensor([float(r)], dtype=torch.float64)
    addp.win_create(x, "w", zero_init=True)
    send = torch.tensor([float(r)], dtype=torch.float64)
    addp.win_put(send, "w", self_weight=0.5, dst_weights={t: 3.0 for t in outs})
    assert send.item() == r * 0.5  # scaled in place after the put
    addp.win_put(torch.tensor([float(r)], dtype=torch.float64), "w",
                 dst_weights={t: 2.0 for t in outs})
    COMM.Barrier()
    assert addp.get_win_version("w") == {j: 2 for j in ins}
    got = addp.win_update("w", 0.0, {j: 1.0 for j in ins}, clone=True)
    assert got.item() == sum(2.0 * j for j in ins)
    assert x.item() == float(r)  # clone left the registered tensor alone


def test_get_pulls_published_values_with_weights():
    r, n, ins, outs = _ranks()
    x = torch.tensor([10.0 * r, 1.0], dtype=torch.float32)
    addp.win_create(x, "g", zero_init=True)
    addp.win_update("g", 1.0, {})  # publishes x again (unchanged)
    COMM.Barrier()
    addp.win_get("g", src_weights={j: 2.0 for j in ins})
    assert addp.get_win_version("g") == {j: 1 for j in ins}
    COMM.Barrier()  # the update below republishes x: every get must have read the old one
    out = addp.win_update("g", 0.0, {j: 1.0 for j in ins})
    assert out.tolist() == [sum(20.0 * j for j in ins), 2.0 * len(ins)]


def test_win_memory_is_the_published_block_and_survives_win_free():
    r, n, ins, outs = _ranks()
    x = torch.full((2, 2), float(r + 1), dtype=torch.float64)
    addp.win_create(x, "m")
    mem = addp.win_memory("m")
    assert mem is not x and mem.shape == x.shape and torch.equal(mem, x)
    assert addp.win_memory("m") is mem  # asking again returns the same tensor
    # Writes to it are what in-neighbours pull, with no put or update in between.
    mem.fill_(100.0 + r)
    COMM.Barrier()
    addp.win_get("m")
    COMM.Barrier()
    got = addp.win_update("m", 0.0, {j: 1.0 for j in ins}, clone=True)
    assert torch.equal(got, torch.full((2, 2), float(sum(100.0 + j for j in ins)), dtype=torch.float64))
    # win_put of it reaches the out-neighbours; win_update now writes into it, not into x.
    COMM.Barrier()
    addp.win_put(mem, "m")
    COMM.Barrier()
    assert addp.win_update("m") is mem
    want = (100.0 + r + sum(100.0 + j for j in ins)) / (len(ins) + 1)
    assert torch.allclose(mem, torch.full((2, 2), want, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(x, torch.full((2, 2), float(r + 1), dtype=torch.float64))
    COMM.Barrier()
    addp.win_free("m")
    # Moved off MPI's memory: still readable and writable, same values.
    assert torch.allclose(mem, torch.full((2, 2), want, dtype=torch.float64), rtol=0, atol=1e-12)
    mem.add_(1.0)
    addp.win_create(torch.zeros(3, dtype=torch.float16), "half")
    with pytest.raises(addp.CommError, match=r"win_memory\('half'\).*float16"):
        addp.win_memory("half")


def test_accumulate_and_update_then_collect():
    r, n, ins, outs = _ranks()
    x = torch.full((4,), float(r), dtype=torch.float64)
    addp.win_create(x, "acc", zero_init=True)
    for _ in range(3):
        addp.win_accumulate(torch.full((4,), float(r + 1), dtype=torch.float64), "acc",
                            dst_weights={t: 0.5 for t in outs})
    COMM.Barrier()
    assert addp.get_win_version("acc") == {j: 3 for j in ins}
    addp.win_update_then_collect("acc")
    assert x.tolist() == [r + sum(1.5 * (j + 1) for j in ins)] * 4
    # reset: the buffers were zeroed, a second collect adds nothing
    addp.win_update_then_collect("acc")
    assert x.tolist() == [r + sum(1.5 * (j + 1) for j in ins)] * 4


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.int32, torch.int64, torch.float16, torch.bfloat16]
)
def test_dtypes(dtype):
    r, n, ins, outs = _ranks()
    x = torch.full((5,), r + 1, dtype=dtype)
    addp.win_create(x, "d", zero_init=True)
    addp.win_accumulate(torch.full((5,), r + 1, dtype=dtype), "d")
    addp.win_accumulate(torch.full((5,), r + 1, dtype=dtype), "d")
    COMM.Barrier()
    assert addp.win_update_then_collect("d").tolist() == [r + 1 + sum(2 * (j + 1) for j in ins)] * 5
    assert x.dtype == dtype
    COMM.Barrier()
    addp.win_put(torch.full((5,), 3 * (r + 1), dtype=dtype), "d")
    COMM.Barrier()
    assert addp.win_update("d", 0.0, {j: 1.0 for j in ins}).tolist() == [
        sum(3 * (j + 1) for j in ins)
    ] * 5


def test_concurrent_accumulate_with_mutex_loses_nothing():
    r, n, ins, outs = _ranks()
    x = torch.zeros(64, dtype=torch.float64)
    addp.win_create(x, "m", zero_init=True)
    rounds = 25
    one = torch.ones(64, dtype=torch.float64)
    for _ in range(rounds):
        addp.win_accumulate(one, "m", require_mutex=True)
        addp.win_update_then_collect("m", require_mutex=True)
    COMM.Barrier()
    addp.win_update_then_collect("m", require_mutex=True)
    assert x.tolist() == [float(rounds * len(ins))] * 64
    COMM.Barrier()
    # the mutex is re-entrant inside one process
    with addp.win_mutex("m"):
        addp.win_accumulate(one, "m", require_mutex=True)
    with addp.win_mutex("m", for_self=True):
        addp.win_update("m", require_mutex=True)


def test_win_mutex_serialises_read_modify_write(guard=None):
    # A counter at rank 0 in a plain MPI window, incremented by get / sleep / put from every
    # rank: only mutual exclusion (win_mutex on rank 0) keeps every increment.
    addp.win_create(torch.zeros(1), "mx")
    counter = MPI.Win.Allocate(8, 8, comm=COMM)
    if addp.rank() == 0:
        counter.Lock(0, MPI.LOCK_EXCLUSIVE)
        counter.tomemory().cast("B")[:8] = bytes(8)
        counter.Unlock(0)
    COMM.Barrier()
    value = np.zeros(1, dtype=np.int64)
    rounds = 8
    for _ in range(rounds):
        with (guard or addp.win_mutex("mx", ranks=[0])):
            counter.Lock(0, MPI.LOCK_SHARED)
            counter.Get([value, MPI.INT64_T], 0)
            counter.Unlock(0)
            time.sleep(0.002)
            value += 1
            counter.Lock(0, MPI.LOCK_SHARED)
            counter.Put([value, MPI.INT64_T], 0)
            counter.Unlock(0)
    COMM.Barrier()
    counter.Lock(0, MPI.LOCK_SHARED)
    counter.Get([value, MPI.INT64_T], 0)
    counter.Unlock(0)
    counter.Free()
    assert value[0] == rounds * addp.size()


def test_set_topology_refused_while_a_window_lives():
    addp.win_create(torch.zeros(2), "t")
    assert addp.set_topology(exponential_two_graph(addp.size())) is False
    addp.win_free("t")
    assert addp.set_topology(exponential_two_graph(addp.size())) is True


def test_errors():
    with pytest.raises(addp.CommError, match="no window named 'nope'"):
        addp.win_update("nope")
    with pytest.raises(addp.CommError, match="no window named"):
        addp.win_put(torch.zeros(2), "nope")
    addp.win_create(torch.zeros(2), "e")
    with pytest.raises(addp.CommError, match="exists"):
        addp.win_create(torch.zeros(2), "e")
    with pytest.raises(addp.CommError, match="does not match"):
        addp.win_put(torch.zeros(3), "e")
    with pytest.raises(addp.CommError, match="not out-neighbours"):
        addp.win_put(torch.zeros(2), "e", dst_weights={addp.rank(): 1.0})
    with pytest.raises(addp.CommError, match="together"):
        addp.win_update("e", self_weight=0.5)
    with pytest.raises(addp.CommError, match="win_update: self_weight=nan is not a weight"):
        addp.win_update("e", self_weight=float("nan"), neighbor_weights={})
    with pytest.raises(addp.CommError, match="win_put: self_weight=inf is not a weight"):
        addp.win_put(torch.zeros(2), "e", self_weight=float("inf"), dst_weights={})
    if addp.out_neighbor_ranks():
        out = addp.out_neighbor_ranks()[0]
        with pytest.raises(addp.CommError, match=rf"win_put: weight of rank {out}=nan is not a weight"):
            addp.win_put(torch.zeros(2), "e", dst_weights={out: float("nan")})
    # a name or tensor refused on one rank only: every rank raises, nobody waits in the collective
    if addp.size() > 1:
        refused = "'e' exists" if addp.rank() == 0 else r"refused on rank\(s\) \[0\] \(win_create: a window named 'e'"
        with pytest.raises(addp.CommError, match=refused):
            addp.win_create(torch.zeros(2), "e" if addp.rank() == 0 else "fresh")
        last = addp.size() - 1
        refused = "windows support" if addp.rank() == last else rf"refused on rank\(s\) \[{last}\]"
        with pytest.raises(addp.CommError, match=refused):
            addp.win_create(torch.zeros(2, dtype=torch.complex64 if addp.rank() == last else torch.float32), "c")
        refused = "no window named 'nope'" if addp.rank() == 0 else r"win_free: refused on rank\(s\) \[0\]"
        with pytest.raises(addp.CommError, match=refused):
            addp.win_free("nope" if addp.rank() == 0 else "e")
        assert sorted(get_context().windows) == ["e"]  # nothing was made or freed anywhere
    # shapes that differ between ranks are caught collectively at creation
    if addp.size() > 1:
        with pytest.raises(addp.CommError, match="disagree"):
            addp.win_create(torch.zeros(addp.rank() + 1), "bad")
        assert "bad" not in get_context().windows


def test_nonblocking_handles():
    r, n, ins, outs = _ranks()
    x = torch.zeros(3, dtype=torch.float64)
    addp.win_create(x, "nb", zero_init=True)
    handles = [
        addp.win_put_nonblocking(torch.full((3,), float(r), dtype=torch.float64), "nb"),
        addp.win_accumulate_nonblocking(torch.full((3,), 1.0, dtype=torch.float64), "nb"),
    ]
    assert all(addp.win_wait(h) for h in handles)
    assert all(addp.win_poll(h) for h in handles)
    assert addp.poll(handles[0]) and addp.synchronize(handles[1])  # the shared handle API
    COMM.Barrier()
    h = addp.win_get_nonblocking("nb", src_weights={})  # nothing to pull: versions unchanged
    addp.win_wait(h)
    assert addp.get_win_version("nb") == {j: 2 for j in ins}
    assert addp.win_update_then_collect("nb").tolist() == [sum(j + 1.0 for j in ins)] * 3


def test_put_counts_count_completed_puts_and_accumulates_of_every_rank():
    r, n, ins, outs = _ranks()
    x = torch.zeros(2, dtype=torch.float64)
    addp.win_create(x, "counted")
    assert addp.win_put_counts("counted") == {j: 0 for j in sorted([r, *ins])}
    COMM.Barrier()  # every rank has read its zeros before anyone puts
    # Rank j makes j + 1 blocking puts (one of them to nobody), j % 2 accumulates and one
    # nonblocking put, which counts once waited for.
    for k in range(r + 1):
        addp.win_put(x, "counted", dst_weights={} if k == 0 else None)
    for _ in range(r % 2):
        addp.win_accumulate(x, "counted")
    addp.win_wait(addp.win_put_nonblocking(x, "counted"))
    COMM.Barrier()
    assert addp.win_put_counts("counted") == {j: j + 1 + j % 2 + 1 for j in sorted([r, *ins])}
    COMM.Barrier()  # nobody frees the window while a neighbour still reads its count


def _irregular_directed(n):
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for i in range(n):
        g.add_edge(i, (i + 1) % n)
    if n >= 3:
        g.add_edge(0, 2)  # rank 0 has out-degree 2, everyone else 1: not doubly stochastic
    return g


@pytest.mark.parametrize("graph", ["exp2", "irregular"])
def test_push_sum_reaches_the_exact_average(graph):
    n = addp.size()
    if graph == "irregular":
        assert addp.set_topology(_irregular_directed(n))
    r, _, ins, outs = _ranks()
    value = float(r * r + 1)
    x = torch.tensor([value, 1.0], dtype=torch.float64)
    addp.win_create(x, "ps", zero_init=True)
    w = 1.0 / (len(outs) + 1)
    for _ in range(80):
        addp.win_accumulate(x, "ps", self_weight=w, dst_weights={t: w for t in outs})
        COMM.Barrier()
        addp.win_update_then_collect("ps")
        COMM.Barrier()
    average = sum(k * k + 1 for k in range(n)) / n
    assert abs(x[0].item() / x[1].item() - average) < 1e-6


def test_push_sum_with_associated_p():
    n = addp.size()
    assert addp.set_topology(_irregular_directed(n))
    r, _, ins, outs = _ranks()
    x = torch.tensor([float(3 * r)], dtype=torch.float64)
    addp.win_create(x, "pp", zero_init=True)
    addp.turn_on_win_ops_with_associated_p()
    assert addp.win_associated_p("pp") == 1.0
    w = 1.0 / (len(outs) + 1)
    for _ in range(80):
        addp.win_accumulate(x, "pp", self_weight=w, dst_weights={t: w for t in outs})
        COMM.Barrier()
        addp.win_update_then_collect("pp")
        COMM.Barrier()
    assert abs(x.item() / addp.win_associated_p("pp") - 3 * (n - 1) / 2) < 1e-6


def test_put_into_a_rank_busy_in_python_does_not_wait_for_it():
    r, n, ins, outs = _ranks()
    x = torch.zeros(1024, dtype=torch.float64)
    addp.win_create(x, "async", zero_init=True)
    COMM.Barrier()
    if r == 0:
        time.sleep(1.5)  # busy in Python: no MPI call, no progress from this rank
    elif 0 in outs:
        start = time.perf_counter()
        for _ in range(5):
            addp.win_put(torch.full((1024,), float(r), dtype=torch.float64), "async",
                         dst_weights={0: 1.0})
        assert time.perf_counter() - start < 1.0
    COMM.Barrier()
    if r == 0:
        assert addp.get_win_version("async") == {j: 5 for j in ins}
        assert addp.win_update("async", 0.0, {j: 1.0 for j in ins}).tolist() == [
            float(sum(ins))
        ] * 1024


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tensors_are_staged_through_host():
    r, n, ins, outs = _ranks()
    x = torch.full((3,), float(r), device="cuda")
    addp.win_create(x, "cuda", zero_init=True)
    addp.win_accumulate(torch.full((3,), 1.0 + r, device="cuda"), "cuda")
    COMM.Barrier()
    out = addp.win_update_then_collect("cuda")
    assert out.device.type == "cuda" and out is x
    assert out.cpu().tolist() == [r + sum(j + 1.0 for j in ins)] * 3
