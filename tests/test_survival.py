"""The pieces of surviving failures that need no mpirun: checkpoints, the restart loop's bounds,
a fault-tolerant job's verdict and the config keys (the end-to-end runs are in test_fault_tolerance)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import asyncddp as addp
from asyncddp.errors import ConfigError
from asyncddp.launcher.config import parse_config_text
from asyncddp.launcher.run_config import RunOptions, merge_run_config
from asyncddp.launcher.job import JobResult
from asyncddp.launcher.plan import LaunchPlan
from asyncddp.launcher.restart import run_with_restarts
from asyncddp.launcher.survival import RankEnds, survival_result
from asyncddp.launcher.mpi import MpiFlavor
from asyncddp.comm.rank_report import rank_end_line, report_lost_ranks


def _model(fill: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(fill)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()  # momentum buffers: optimizer state worth saving
    return model, optimizer


def test_checkpoint_round_trip_on_rank_0_and_any_world_size(tmp_path, monkeypatch):
    path = tmp_path / "run" / "ckpt.pt"
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    assert addp.save_checkpoint(path, *_model(1.0), step=7) is False and not path.exists()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    saved, saved_optimizer = _model(1.0)
    assert addp.save_checkpoint(path, saved, saved_optimizer, step=7) is True
    assert [item.name for item in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left
    for rank in ("0", "2", "5"):  # a relaunch with a different number of ranks: each rank loads it
        monkeypatch.setenv("OMPI_COMM_WORLD_RANK", rank)
        model, optimizer = _model(0.0)
        assert addp.load_checkpoint(path, model, optimizer) == 7
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))
        momentum = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
        assert all(torch.equal(a, saved_optimizer.state[b]["momentum_buffer"])
                   for a, b in zip(momentum, saved.parameters()))


def test_a_missing_checkpoint_is_step_0_and_a_bad_one_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    model, optimizer = _model(2.0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert addp.load_checkpoint(tmp_path / "none.pt", model, optimizer) == 0
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(addp.CheckpointError, match=r"^cannot load checkpoint .*bad\.pt: "):
        addp.load_checkpoint(tmp_path / "bad.pt", model)
    with pytest.raises(addp.CheckpointError, match=r"^cannot write checkpoint .*: .*give a path in a folder"):
        addp.save_checkpoint(Path("/proc/ckpt.pt"), model, step=1)


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    path = tmp_path / "ckpt.pt"
    addp.save_checkpoint(path, *_model(1.0), step=3)

    def crash(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(addp.CheckpointError, match="No space left on device"):
        addp.save_checkpoint(path, *_model(5.0), step=4)
    monkeypatch.undo()
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert addp.load_checkpoint(path, *_model(0.0)) == 3
    assert [item.name for item in tmp_path.iterdir()] == ["ckpt.pt"]


PLAN = LaunchPlan(argv=("mpirun",), env={"A": "1"}, rank_hosts=("localhost",) * 2, hosts=(),
                  flavor=MpiFlavor("openmpi", "5.0.11", 5))


class _Runs:
    """A stand-in for run_plan that returns the given results in turn and records each launch."""

    def __init__(self, *results: JobResult) -> None:
        self.results = list(results)
        self.launches: list[tuple[dict, str | None]] = []

    def __call__(self, plan: LaunchPlan, *, output_dir=None, timeout=None) -> JobResult:
        self.launches.append((plan.env, output_dir))
        return self.results.pop(0)


FAILED = JobResult(9, "failed", duration_s=30.0, summary="asyncddp: job failed: rank 1 on localhost exited with code 9")
QUICK = JobResult(3, "failed", duration_s=1.0, summary="asyncddp: job failed: rank 0 on localhost exited with code 3")


def test_restarts_are_bounded_logged_and_counted(tmp_path, capsys):
    import sys

    runs = _Runs(FAILED, FAILED, FAILED)
    result = run_with_restarts(PLAN, 2, output_dir=str(tmp_path), run=runs, err=sys.stderr)
    assert [env["ASYNCDDP_RESTART_COUNT"] for env, _ in runs.launches] == ["0", "1", "2"]
    assert all(env["A"] == "1" for env, _ in runs.launches)
    assert [logs for _, logs in runs.launches] == [str(tmp_path), str(tmp_path / "restart.1"), str(tmp_path / "restart.2")]
    assert result.exit_code == 9
    assert result.summary == (FAILED.summary + " [launch 3 of the job (after 2 restarts); "
                              "not relaunched: --max-restarts 2 used up]")
    assert capsys.readouterr().err.splitlines() == [
        f"asyncddp: relaunching the job ({k} of 2, ASYNCDDP_RESTART_COUNT={k}) after 30.0 s: {FAILED.summary}"
        for k in (1, 2)]


def test_quick_failures_stop_the_loop_but_a_slow_one_between_resets_it():
    runs = _Runs(QUICK, FAILED, QUICK, QUICK, FAILED)
    result = run_with_restarts(PLAN, 10, run=runs)
    assert len(runs.launches) == 4 and result.exit_code == 3
    assert result.summary.endswith("[launch 4 of the job (after 3 restarts); not relaunched: the last two "
                                   "launches failed within 10 s of starting, so a relaunch would fail too]")


@pytest.mark.parametrize("first", [JobResult(0, "ok"), JobResult(130, "interrupted", summary="asyncddp: interrupted")])
def test_success_and_ctrl_c_are_never_relaunched(first):
    runs = _Runs(first)
    assert run_with_restarts(PLAN, 3, run=runs) == first and len(runs.launches) == 1


def test_survival_verdicts():
    ends = RankEnds(4, started=0.0)
    assert ends.note(2, "ordinary line") is None
    for rank, code in ((0, 0), (1, -9), (3, 0)):
        shown = ends.note(rank, rank_end_line(rank, code))
        assert shown == ("" if code == 0 else "asyncddp: rank 1 lost: killed by SIGKILL")
    hosts = ("a", "a", "b", "b")
    code, summary, lost, first = survival_result(ends, hosts, None)
    assert code == 0 and [item.rank for item in lost] == [1, 2] and first is None
    assert summary.startswith("asyncddp: job finished on 2 of 4 ranks; lost 2: rank 1 on a at ")
    assert summary.endswith("(killed by SIGKILL); rank 2 on b (no report: lost with its guard, or its host was lost)")
    code, summary, _, first = survival_result(ends, hosts, 3)
    assert code == 137 and first.rank == 1 and summary.startswith("asyncddp: job failed: 2 of 4 ranks finished, 3 needed (--min-ranks 3)")


def test_reports_are_read_after_the_nul_open_mpi_sometimes_adds():
    ends = RankEnds(2, started=0.0)
    assert ends.note(1, "\x00" + rank_end_line(1, -9)) == "asyncddp: rank 1 lost: killed by SIGKILL"
    assert ends.note(0, "\x00asyncddp-ranks-lost: 1") == "" and 1 in ends.declared
    assert ends.ends[1][0] == -9


def test_survivors_still_training_long_after_a_loss_are_not_stopped(monkeypatch):
    from asyncddp.launcher import survival

    clock = [100.0]
    monkeypatch.setattr(survival.time, "monotonic", lambda: clock[0])
    ends = RankEnds(4, started=100.0)
    ends.note(2, rank_end_line(2, -9))
    clock[0] += survival.LINGER_S + 30
    assert ends.lingering(clock[0]) == ()  # ranks 0, 1, 3 are survivors at work, not hung
    ends.note(0, rank_end_line(0, 0))
    ends.note(1, rank_end_line(1, 0))
    assert ends.lingering(clock[0] + survival.LINGER_S) == ()
    assert ends.lingering(clock[0] + survival.LINGER_S + 1) == (3,)  # 3 outlived the finished ones
    ends.declared[3] = 5.0
    assert ends.lingering(clock[0]) == (3,)  # the survivors said so: at once


def test_lost_ranks_are_reported_only_in_a_fault_tolerant_job(capsys, monkeypatch):
    monkeypatch.delenv("ASYNCDDP_FAULT_TOLERANT", raising=False)
    report_lost_ranks([2])
    monkeypatch.setenv("ASYNCDDP_FAULT_TOLERANT", "1")
    report_lost_ranks([3, 1, 3])
    assert capsys.readouterr().err == "asyncddp-ranks-lost: 1,3\n"


def test_config_keys_and_their_checks():
    cluster = parse_config_text("hosts: [{name: localhost, slots: 4}]\nfault_tolerant: true\nmin_ranks: 2\n"
                                "max_restarts: 3\n", "c.yaml")
    config = merge_run_config(RunOptions(command=("x.py",)), cluster)
    assert (config.fault_tolerant, config.min_ranks, config.max_restarts) == (True, 2, 3)
    config = merge_run_config(RunOptions(command=("x.py",), fault_tolerant=False, min_ranks=None, max_restarts=0),
                              parse_config_text("hosts: [{name: localhost, slots: 4}]\nmax_restarts: 3\n", "c.yaml"))
    assert (config.fault_tolerant, config.max_restarts) == (False, 0)
    with pytest.raises(ConfigError, match=r"^c\.yaml:2: fault_tolerant: expected true or false, got 'yes please'$"):
        parse_config_text("hosts: [{name: localhost}]\nfault_tolerant: yes please\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"^--min-ranks 2: only a fault-tolerant job goes on with fewer ranks; "):
        merge_run_config(RunOptions(command=("x.py",), num_ranks=4, min_ranks=2))
    with pytest.raises(ConfigError, match=r"^--min-ranks 5: give a number of ranks from 1 to the job's 4$"):
        merge_run_config(RunOptions(command=("x.py",), num_ranks=4, min_ranks=5, fault_tolerant=True))
    with pytest.raises(ConfigError, match=r"^--max-restarts -1: give a whole number from 0 to 100$"):
        merge_run_config(RunOptions(command=("x.py",), num_ranks=4, max_restarts=-1))
