"""Fault tolerance of the communication core under a real ULFM mpirun with real SIGKILLs.

Each test kills ranks by PID at steps fixed by the harness (``tests/ft/killer.py``) and checks
that every survivor meets exactly one ``RankLostError`` per recovery, naming the lost ranks, and
exact values on the rebuilt world afterwards (sizes, ranks, Exp-2 of the new size).
"""

from __future__ import annotations

import pytest

from tests.ft.killer import run_and_kill

pytestmark = pytest.mark.timeout(120)


def test_loop_survives_rank_0_then_a_loss_during_recovery(tmp_path):
    """Blocking and nonblocking steps alternate. Rank 0 dies; later rank 1 dies and rank 3 60 ms
    after it, while the survivors are detecting the first loss and shrinking: one recovery
    takes both out (or, if the timing lets the first recovery finish, one error each; either
    way the same on every survivor)."""
    kills = [[0], [1, 3]]
    results = run_and_kill("ft_loop.py", 5, kills, tmp_path, "12", "3,8", "mixed", stagger={1: 0.06})
    assert sorted(results) == [2, 4]
    assert sorted(res["rank"] for res in results.values()) == [0, 1]
    first = results[2]
    assert first["errors"][0]["lost"] == [0]
    assert sorted(r for e in first["errors"][1:] for r in e["lost"]) == [1, 3]
    for launch_rank, res in results.items():
        assert [e["lost"] for e in res["errors"]] == [e["lost"] for e in first["errors"]], launch_rank
        assert res["bad"] == [], res["bad"]
        assert res["size"] == 2 and res["version"] == len(first["errors"])
        assert [c["lost_ranks"] for c in res["changes"]] == [e["lost"] for e in first["errors"]]
        assert res["exp2"], "the topology is Exp-2 of the new size"
        assert len(res["stalls"]) == 2 and max(res["stalls"]) < 5, res["stalls"]
