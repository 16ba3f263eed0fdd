"""Fault tolerance of the communication core under a real ULFM mpirun with real SIGKILLs.

Each test kills ranks by PID at a step fixed by the harness (``tests/ft/killer.py``) and checks
that every survivor meets exactly one ``RankLostError`` naming the lost ranks, and exact values on
the rebuilt world afterwards.
"""

from __future__ import annotations

import pytest

from tests.ft.killer import run_and_kill

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("victims, mode", [([2], "blocking"), ([0], "blocking"), ([1, 3], "blocking"),
                                           ([3], "nonblocking")])
def test_loop_survives_lost_ranks(tmp_path, victims, mode):
    results = run_and_kill("ft_loop.py", 4, victims, tmp_path, "12", "5", mode)
    survivors = 4 - len(victims)
    assert sorted(res["rank"] for res in results.values()) == list(range(survivors))
    for launch_rank, res in results.items():
        assert len(res["errors"]) == 1, (launch_rank, res)
        assert res["errors"][0]["lost"] == victims
        assert res["bad"] == [], res["bad"]
        assert res["size"] == survivors and res["version"] == 1
        assert [c["lost_ranks"] for c in res["changes"]] == [victims]
        assert res["exp2"], "the topology is Exp-2 of the new size"
        assert res["stall"] is not None and res["stall"] < 5
