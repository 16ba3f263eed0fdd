"""``asyncddp bench MODEL --kill-rank R``: options, checks and results of a bench that loses a rank.

Each method runs as a fault-tolerant job (the launch of ``asyncddp run --fault-tolerant``); rank R
SIGKILLs itself instead of running step S (steps count from 0, warm-up included) and the survivors
train on. A ``FaultRun`` says what that cost: img/s before and after the loss, the recovery stall
(on each survivor, the time from the end of its last step before it noticed the loss to the end
of the step in which it recovered; the largest over survivors), and how far apart the survivors'
parameters are at the end, beside what the method promises about that. Pure: no MPI, no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from asyncddp.bench.methods import METHODS
from asyncddp.bench.network import BenchNetwork
from asyncddp.bench.results import ModelBenchOptions
from asyncddp.errors import ConfigError

__all__ = ["SURVIVING_METHODS", "CANNOT_SURVIVE", "GUARANTEES", "choose_fault_methods", "check_kill",
           "default_kill_step", "FaultBenchOptions", "FaultRun", "FaultBenchResult"]

# The methods of ``asyncddp bench MODEL`` whose optimizers carry on after a lost rank, in table order,
# why the others cannot, and what each promises about the survivors' parameters at the end (the
# measured disagreement's yardstick: short label for the table, sentence for the notes).
SURVIVING_METHODS = tuple(m.name for m in METHODS.values() if m.survives is not None)
CANNOT_SURVIVE = {m.name: m.cannot_survive for m in METHODS.values() if m.survives is None}
GUARANTEES = {m.name: m.survives for m in METHODS.values() if m.survives is not None}


def choose_fault_methods(given: bool, methods: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(methods to run, methods left out) for ``--methods`` (``given`` False: the default, every
    surviving method). ConfigError when none of the chosen methods can survive a lost rank."""
    if not given:
        return SURVIVING_METHODS, ()
    run = tuple(m for m in methods if m in SURVIVING_METHODS)
    left_out = tuple(m for m in methods if m not in SURVIVING_METHODS)
    if not run:
        why = "; ".join(f"{m}: {CANNOT_SURVIVE[m]}" for m in left_out)
        raise ConfigError(f"--methods {','.join(methods)} with --kill-rank: none of these can survive a lost rank "
                          f"({why}); choose from {', '.join(SURVIVING_METHODS)}")
    return run, left_out


def default_kill_step(warmup: int, iters: int) -> int:
    """Half-way through the timed steps."""
    return warmup + iters // 2


def check_kill(num_ranks: int, kill_rank: int, kill_at_step: int, warmup: int, iters: int,
               min_ranks: int | None = None, min_ranks_from: str = "--min-ranks") -> None:
    """ConfigError naming the flag unless rank ``kill_rank`` of ``num_ranks`` can be lost at step
    ``kill_at_step`` with timed steps before and after it and enough ranks left."""
    if num_ranks < 2:
        raise ConfigError(f"--np {num_ranks} with --kill-rank: losing a rank needs at least 2 ranks")
    if not 0 <= kill_rank < num_ranks:
        raise ConfigError(f"--kill-rank {kill_rank}: give a rank from 0 to {num_ranks - 1} (the job has "
                          f"{num_ranks})")
    needed = min_ranks or 1
    if num_ranks - 1 < needed:
        raise ConfigError(f"{min_ranks_from} {min_ranks} with --kill-rank: losing rank {kill_rank} leaves "
                          f"{num_ranks - 1} of {num_ranks} ranks; give at most {num_ranks - 1}")
    if iters < 3:
        raise ConfigError(f"--iters {iters} with --kill-rank: give at least 3 timed steps (before, at and after "
                          "the loss)")
    first, last = warmup + 1, warmup + iters - 2
    if not first <= kill_at_step <= last:
        raise ConfigError(f"--kill-at-step {kill_at_step}: give a step from {first} to {last} (steps count from 0, "
                          f"the {warmup} warm-up steps included; timed steps must come before and after the loss)")


@dataclass(frozen=True)
class FaultBenchOptions(ModelBenchOptions):
    """One method's run: a model bench's settings and the loss to stage; sent to the ranks as JSON."""

    kill_rank: int = 1
    kill_at_step: int = 7


@dataclass(frozen=True)
class FaultRun:
    """One method's job. ``img_s_after`` is the survivors' total over the steps after each one's
    recovery step; ``img_s_before`` is the survivors' mean per-rank rate over the timed steps before
    the loss times every rank of the job (the lost rank's own timings die with it).
    ``disagreement``: the largest |difference| of any parameter between two survivors after their
    last step, before any averaging. ``stall_s`` None: no survivor noticed the loss during its steps
    (it recovered after them)."""

    method: str
    num_ranks: int
    survivors: int = 0
    lost_ranks: tuple[int, ...] = ()  # as launched, from the launcher's reports
    lost: tuple[str, ...] = ()  # "rank 2 on node1 at 12.3 s (killed by SIGKILL)"
    img_s_before: float = 0.0
    img_s_after: float = 0.0
    iter_ms_before: float = 0.0  # survivors' mean step time
    iter_ms_after: float = 0.0
    stall_s: float | None = None
    stall_s_per_rank: tuple[float | None, ...] = ()  # per survivor, in launch-rank order
    recovery_step: int | None = None  # the first step in which a survivor recovered
    disagreement: float = 0.0
    guarantee: str = ""
    exit_code: int | None = None  # the job's; None when it never ran
    error: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def after_over_before(self) -> float | None:
        return self.img_s_after / self.img_s_before if self.ok and self.img_s_before > 0 else None

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("lost_ranks", "lost", "stall_s_per_rank", "notes"):
            data[name] = list(data[name])
        data["after_over_before"] = self.after_over_before
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FaultRun":
        keep = {k: v for k, v in data.items() if k != "after_over_before"}
        for name in ("lost_ranks", "lost", "stall_s_per_rank", "notes"):
            keep[name] = tuple(keep.get(name, ()))
        return cls(**keep)


@dataclass(frozen=True)
class FaultBenchResult:
    model: str
    device: str
    num_ranks: int
    kill_rank: int
    kill_at_step: int
    batch_size: int
    image_size: int
    warmup: int
    iters: int
    num_parameters: int = 0
    runs: tuple[FaultRun, ...] = ()
    left_out: tuple[str, ...] = ()  # "ddp: why it cannot survive", one per method not run
    host: str = ""
    network: BenchNetwork | None = None  # the emulated cluster, None on real hosts

    def to_dict(self) -> dict:
        data = asdict(self)
        data["runs"] = [run.to_dict() for run in self.runs]
        data["left_out"] = list(self.left_out)
        data["network"] = self.network.to_dict() if self.network else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FaultBenchResult":
        return cls(**{**data, "runs": tuple(FaultRun.from_dict(run) for run in data["runs"]),
                      "left_out": tuple(data.get("left_out", ())),
                      "network": BenchNetwork.from_dict(data.get("network"))})
