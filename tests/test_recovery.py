"""Fault tolerance of the communication core under a real ULFM mpirun with real SIGKILLs.

Each test kills ranks by PID at steps fixed by the harness (``tests/ft/killer.py``) and checks
that every survivor meets exactly one ``RankLostError`` per recovery, naming the lost ranks, and
exact values on the rebuilt world afterwards (sizes, ranks, Exp-2 of the new size), and that
the communicators each recovery replaced were freed.
"""

from __future__ import annotations

import pytest

from tests.ft.killer import run_and_kill

pytestmark = pytest.mark.timeout(120)


def test_loop_survives_rank_0_then_a_loss_during_recovery(tmp_path):
    """Blocking and nonblocking steps alternate. Rank 0 is killed; later rank 1, and launch
    rank 3 half-way through rebuilding the world after that loss (the other survivors are then
    inside collectives of the rebuild): the agreement fails, the recovery shrinks again, and
    one error names both."""
    results = run_and_kill("ft_loop.py", 5, [[0], [1]], tmp_path, "12", "3,8", "mixed", "3@1",
                           kill_on_file=("rebuild.3", 3))
    assert sorted(results) == [2, 4]
    for res in results.values():
        assert [e["lost"] for e in res["errors"]] == [[0], [1, 3]], res["errors"]
        assert [(c["lost_ranks"], c["attempts"]) for c in res["changes"]] == [([0], 1), ([1, 3], 2)]
        assert res["bad"] == [], res["bad"]
        assert res["size"] == 2 and res["version"] == 2 and sorted(r["rank"] for r in results.values()) == [0, 1]
        assert res["exp2"], "the topology is Exp-2 of the new size"
        assert len(res["stalls"]) == 2 and max(res["stalls"]) < 5, res["stalls"]
        # Three shrinks each made a world, machine splits and the engine's three duplicates;
        # the ones replaced were freed, so Open MPI hands out the same slots again (leaking
        # them would push the next slot up by about six per shrink).
        assert res["old_freed"] == [True, True], res["old_freed"]
        first, *after = res["comm_slots"]
        assert len(after) == 2 and max(after) <= first + 1, res["comm_slots"]
