"""Bytes counted by the comm core against the bytes known ops send (run with ASYNCDDP_RANKS_PER_MACHINE=1,
so a large allreduce crosses "machines" and runs as asyncddp's own ring)."""

import pytest
import torch

import asyncddp as addp
from asyncddp.comm.p2p import EAGER_BYTES
from asyncddp.comm.ring import MIN_CHUNK_BYTES
from asyncddp.comm.traffic import allreduce_bytes


def _counted(op):
    addp.barrier()
    addp.reset_comm_stats()
    op()
    return addp.comm_stats()


def test_reset_starts_from_zero():
    addp.allreduce(torch.ones(10))
    stats = _counted(lambda: None)
    assert (stats.num_ops, stats.num_messages, stats.bytes_sent, stats.bytes_by_kind) == (0, 0, 0, {})


@pytest.mark.parametrize("count", [1000, 2 * 3 * 4 * MIN_CHUNK_BYTES // 4])  # MPI's Allreduce, then our ring
def test_allreduce_of_n_floats_sends_two_n_minus_one_over_n(count):
    n = addp.size()
    stats = _counted(lambda: addp.allreduce_(torch.ones(count)))
    assert stats.bytes_by_kind["allreduce"] == 2 * (n - 1) * 4 * count // n
    checks = allreduce_bytes(16, n)  # the shape check: one Allreduce of two int64
    assert stats.bytes_by_kind.get("shape_check", 0) == (checks if n > 1 else 0)
    assert stats.bytes_sent == stats.bytes_by_kind["allreduce"] + stats.bytes_by_kind.get("shape_check", 0)
    ring = 4 * count >= n * MIN_CHUNK_BYTES and addp.machine_size() > 1  # one rank per fake machine
    assert ring == (n > 1 and count > 1000)
    assert stats.num_messages == (1 + (2 * (n - 1) if ring else 1) if n > 1 else 1)  # the check, then the data


@pytest.mark.parametrize("count", [100, 2 * EAGER_BYTES // 4])  # one Sendrecv, then the chunked exchange
def test_a_one_peer_step_sends_the_tensor_once(count):
    r, n = addp.rank(), addp.size()
    peer = (r + 1) % n
    source = (r - 1) % n

    def step():
        addp.neighbor_allreduce(torch.ones(count), self_weight=0.5, src_weights={source: 0.5},
                                dst_weights={peer: 1.0})

    stats = _counted(step)
    assert stats.bytes_by_kind["neighbor_allreduce"] == 4 * count
    assert stats.num_messages >= 1


def test_window_put_counts_data_and_its_counter():
    x = torch.ones(257, dtype=torch.float64)
    addp.win_create(x, "stats")
    try:
        stats = _counted(lambda: addp.win_put(x, "stats"))
        out = len(addp.out_neighbor_ranks())
        assert stats.bytes_by_kind["win_put"] == out * (8 * 257 + 8)  # the data, then the 8-byte put counter
        assert "win_put_count" not in stats.bytes_by_kind  # its "puts done" increment is on its own window
    finally:
        addp.barrier()
        addp.win_free("stats")


def test_a_put_under_the_mutex_counts_the_lock_words():
    x = torch.ones(5, dtype=torch.float64)
    addp.win_create(x, "locked")
    try:
        # Two ranks put into each other: each takes only the other's lock word, so no retries.
        stats = _counted(lambda: addp.win_put(x, "locked", require_mutex=True))
        out = len(addp.out_neighbor_ranks())
        # Compare_and_swap sends the new and the expected word, the release one word.
        assert stats.bytes_by_kind.get("win_mutex", 0) == out * (16 + 8)
        assert stats.bytes_sent == stats.bytes_by_kind["win_put"] + stats.bytes_by_kind.get("win_mutex", 0)
    finally:
        addp.barrier()
        addp.win_free("locked")


def test_counting_starts_again_at_a_new_init():
    # Window traffic is tallied beside the engine; a second init() must not inherit the first's.
    x = torch.ones(33, dtype=torch.float64)
    addp.win_create(x, "before")
    addp.win_put(x, "before")
    addp.barrier()
    addp.win_free("before")
    addp.shutdown()
    addp.init()
    stats = addp.comm_stats()
    assert (stats.num_ops, stats.bytes_sent, stats.bytes_by_kind, stats.bytes_fetched) == (0, 0, {}, 0)


def test_reading_the_counters_starts_no_engine():
    # The engine is made collectively by the first op; comm_stats() is this rank's alone (a rank
    # may log it by itself), so before any op it must read zeros, not make the engine and hang.
    from asyncddp.comm import engine

    addp.shutdown()
    addp.init()
    stats = addp.comm_stats()
    addp.reset_comm_stats()
    assert engine._engine is None
    assert (stats.num_ops, stats.bytes_sent, stats.bytes_by_kind, stats.backend) == (0, 0, {}, "mpi")
