"""ASYNCDDP_RANKS_PER_MACHINE=2 fakes machines of two ranks on one box."""

import asyncddp as addp


def test_blocks_of_two():
    r, n = addp.rank(), addp.size()
    assert addp.local_size() == min(2, n - (r // 2) * 2)
    assert addp.local_rank() == r % 2
    assert addp.machine_rank() == r // 2
    assert addp.machine_size() == (n + 1) // 2
    assert addp.is_homogeneous() == (n % 2 == 0)
