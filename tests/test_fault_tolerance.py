"""Fault tolerance of the communication core under a real ULFM mpirun with real SIGKILLs.

Each test kills ranks by PID at steps fixed by the harness (``tests/ft/killer.py``) and checks
that every survivor meets exactly one ``RankLostError`` per loss, naming the lost ranks, and
exact values on the rebuilt world afterwards (sizes, ranks, Exp-2 of the new size).
"""

from __future__ import annotations

import pytest

from tests.ft.killer import run_and_kill

pytestmark = pytest.mark.timeout(120)


def _check_loop(results, kills, num_ranks):
    survivors = num_ranks - sum(len(k) for k in kills)
    assert sorted(res["rank"] for res in results.values()) == list(range(survivors))
    for launch_rank, res in results.items():
        assert [e["lost"] for e in res["errors"]] == kills, (launch_rank, res)
        assert res["bad"] == [], res["bad"]
        assert res["size"] == survivors and res["version"] == len(kills)
        assert [c["lost_ranks"] for c in res["changes"]] == kills
        assert res["exp2"], "the topology is Exp-2 of the new size"
        assert len(res["stalls"]) == len(kills) and max(res["stalls"]) < 5, res["stalls"]


def test_loop_survives_rank_0_then_two_at_once(tmp_path):
    """Blocking and nonblocking steps alternate; rank 0 dies, later two ranks at once."""
    kills = [[0], [1, 3]]
    _check_loop(run_and_kill("ft_loop.py", 5, kills, tmp_path, "12", "3,8", "mixed"), kills, 5)
