"""``asyncddp bench converge``: time to accuracy per method, the options, the data split and the results.

Throughput alone cannot say which method trains a model to a target quality first: a cheaper
step may need more of them, and non-IID shards can leave decentralized replicas apart. This bench
trains one task with every method of ``asyncddp.bench.methods`` (one launch each), evaluates
every rank's model, the ranks' average and their disagreement on a common held-out set every
``eval_every`` steps, and reports when each method first reached ``target_accuracy``, in seconds
of training and in bytes each rank sent (the comm core's counters, ``asyncddp.comm_stats``).

Tasks: ``digits`` (scikit-learn's bundled 8x8 digits, fixed split), ``synthetic`` (a noisy linear
teacher whose Bayes accuracy is known) or ``module:function`` returning the user's model and
datasets. ``split_indices`` deals the training set to ranks (``iid``, ``dirichlet:ALPHA``,
``by-label``); it is pure and the same on every rank. Pure: no MPI, no torch.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, replace

from asyncddp.bench.methods import DEFAULT_SYNC_EVERY
from asyncddp.bench.network import BenchNetwork
from asyncddp.bench.outcome import without_outcome
from asyncddp.bench.results import BenchError
from asyncddp.errors import ConfigError

__all__ = ["BUILTIN_TASKS", "TaskError", "ConvergeOptions", "ConvergeEval", "ConvergeRow", "ConvergeResult",
           "parse_task", "parse_split", "check_target", "split_indices", "first_at_target", "ranked"]

# name -> (default target accuracy, default learning rate, what it is)
BUILTIN_TASKS = {
    "digits": (0.9, 0.05, "scikit-learn's 1,797 8x8 handwritten digits, 80/20 train/test split (seed 0), MLP"),
    "synthetic": (0.8, 0.05, "16-dim Gaussian inputs, 4 classes from a linear teacher, 10% of labels flipped "
                              "(Bayes accuracy 0.9), MLP"),
}
USER_TARGET = 0.9  # a user task's default unless its make_task says otherwise
_TASK = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_]\w*$")


class TaskError(BenchError):
    """The task could not be loaded or built (raised on the ranks; one line for the user)."""


def parse_task(text: str) -> str:
    """``text`` if it names a built-in task or an importable ``module:function``; ConfigError otherwise.

    The module is looked up (not imported) from the current directory first, as the ranks will
    import it; the function is the ranks' to find and call.
    """
    text = str(text).strip()
    if text in BUILTIN_TASKS:
        return text
    if not _TASK.match(text):
        raise ConfigError(f"--task {text!r}: give {', '.join(BUILTIN_TASKS)} or module:function "
                          "(e.g. mypkg.tasks:make_task, returning the model and the train and test datasets)")
    module = text.split(":")[0]
    sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"--task {text}: cannot look up module {module} ({error})") from None
    finally:
        sys.path.remove(os.getcwd())
    if found is None:
        raise ConfigError(f"--task {text}: no module named {module} on the Python path or in the current "
                          "directory; run from the directory that holds it or install its package")
    return text


def parse_split(text: str) -> str:
    """``iid``, ``by-label`` or ``dirichlet:ALPHA`` (ALPHA a finite number > 0), normalised."""
    text = str(text).strip()
    if text in ("iid", "by-label"):
        return text
    if text.startswith("dirichlet:"):
        try:
            alpha = float(text.split(":", 1)[1])
        except ValueError:
            alpha = float("nan")
        if math.isfinite(alpha) and alpha > 0:
            return f"dirichlet:{alpha:g}"
    raise ConfigError(f"--split {text!r}: give iid, by-label or dirichlet:ALPHA with ALPHA > 0 "
                      "(e.g. dirichlet:0.1: strong label skew)")


def check_target(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(f"--target-accuracy {value:g}: give an accuracy in (0, 1], e.g. 0.9")
    return value


def split_indices(labels, num_ranks: int, split: str, seed: int, min_size: int = 1) -> list[list[int]]:
    """Each rank's training-set indices (disjoint, together every index once), the same on every rank.

    ``iid``: a seeded shuffle cut into near-equal parts. ``by-label``: sorted by label (shuffled
    within), cut the same way: each rank holds a few labels. ``dirichlet:ALPHA``: each class is
    shared among the ranks in proportions drawn from Dirichlet(ALPHA) (small ALPHA: each class
    mostly on one or two ranks), redrawn until every rank has ``min_size`` samples.
    """
    import numpy as np

    labels = np.asarray(labels)
    count = len(labels)
    if count < num_ranks * min_size:
        raise ConfigError(f"the training set has {count} samples: too few for {num_ranks} ranks")
    rng = np.random.default_rng(seed)
    if split == "iid":
        return [part.tolist() for part in np.array_split(rng.permutation(count), num_ranks)]
    if split == "by-label":
        order = rng.permutation(count)
        order = order[np.argsort(labels[order], kind="stable")]
        return [part.tolist() for part in np.array_split(order, num_ranks)]
    alpha = float(split.split(":", 1)[1])
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(num_ranks)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_ranks))[:-1] * len(members)).astype(int)
            for rank, part in enumerate(np.split(members, cuts)):
                shards[rank].extend(part.tolist())
        if min(len(shard) for shard in shards) >= min_size:
            return [sorted(shard) for shard in shards]
    raise ConfigError(f"--split {split}: no draw in 1000 gave every one of {num_ranks} ranks {min_size} samples; "
                      "use a larger ALPHA or fewer ranks")


@dataclass(frozen=True)
class ConvergeOptions:
    """One method's launch; the parent sends it to the ranks as JSON."""

    task: str = "digits"
    split: str = "iid"
    method: str = "ddp"
    num_ranks: int = 4
    steps: int = 300
    eval_every: int = 10
    batch_size: int = 32
    lr: float | None = None  # None: the task's default
    width: int = 128  # hidden width of the built-in tasks' MLP
    target_accuracy: float | None = None  # None: the task's default
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    sync_every: int = DEFAULT_SYNC_EVERY  # local steps per outer step (local-sgd, diloco-*)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConvergeEval:
    """One evaluation, all ranks, on the held-out set. ``time_s``: training time so far (the
    slowest rank's; evaluations excluded); ``bytes_sent``: mean over ranks so far."""

    step: int
    time_s: float
    bytes_sent: float
    mean_accuracy: float
    min_accuracy: float
    averaged_accuracy: float
    mean_loss: float
    consensus_distance: float


@dataclass(frozen=True)
class ConvergeRow:
    """One method. ``time_to_target_s``/``steps_to_target``: the first evaluation whose mean
    accuracy over ranks reached the target (None if none did); ``bytes_counted``: ``measured``
    (the comm core's counters) or ``computed`` (torch DDP: its gloo/NCCL traffic is not ours to
    see, so a ring allreduce of every gradient per step)."""

    method: str
    final_accuracy: float | None = None
    min_rank_accuracy: float | None = None
    averaged_model_accuracy: float | None = None
    time_to_target_s: float | None = None
    steps_to_target: int | None = None
    bytes_sent_per_rank: float | None = None
    steps: int = 0
    consensus_distance: float | None = None
    final_loss: float | None = None
    train_time_s: float | None = None
    bytes_to_target: float | None = None
    bytes_counted: str = "measured"
    bytes_by_kind: dict = field(default_factory=dict)  # mean over ranks, per op kind
    curve: tuple[ConvergeEval, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["curve"] = [asdict(point) for point in self.curve]
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ConvergeRow":
        return cls(**{**data, "curve": tuple(ConvergeEval(**point) for point in data.get("curve", ())),
                      "notes": tuple(data.get("notes", ()))})


def first_at_target(curve, target: float) -> ConvergeEval | None:
    """The first evaluation whose mean accuracy is at least ``target``."""
    return next((point for point in curve if point.mean_accuracy >= target), None)


def ranked(rows) -> tuple:
    """Rows by time to target (reached first), then by final accuracy; failed runs last."""
    def key(row):
        if not row.ok:
            return (2, 0.0, row.method)
        if row.time_to_target_s is None:
            return (1, -(row.final_accuracy or 0.0), row.method)
        return (0, row.time_to_target_s, row.method)

    return tuple(sorted(rows, key=key))


@dataclass(frozen=True)
class ConvergeResult:
    task: str
    split: str
    num_ranks: int
    target_accuracy: float | None  # None: every method failed before a user task reported its own
    steps: int
    eval_every: int
    batch_size: int
    lr: float | None
    seed: int
    num_parameters: int = 0
    train_size: int = 0
    test_size: int = 0
    shard_sizes: tuple[int, ...] = ()
    shard_classes: tuple[int, ...] = ()  # distinct labels on each rank's shard
    task_description: str = ""
    rows: tuple[ConvergeRow, ...] = ()
    host: str = ""
    notes: tuple[str, ...] = ()
    network: BenchNetwork | None = None  # the emulated cluster, None on real hosts

    @property
    def num_runs(self) -> int:
        return len(self.rows)

    def failures(self) -> list[str]:
        """One line per method whose run failed (``asyncddp.bench.outcome``'s rule)."""
        return [f"{row.method}: {row.error}" for row in self.rows if not row.ok]

    def find(self, method: str) -> ConvergeRow | None:
        return next((row for row in self.rows if row.method == method and row.ok), None)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rows"] = [row.to_dict() for row in self.rows]
        for name in ("shard_sizes", "shard_classes", "notes"):
            data[name] = list(getattr(self, name))
        data["network"] = self.network.to_dict() if self.network else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ConvergeResult":
        return cls(**{**without_outcome(data), "rows": tuple(ConvergeRow.from_dict(row) for row in data["rows"]),
                      "shard_sizes": tuple(data["shard_sizes"]), "shard_classes": tuple(data["shard_classes"]),
                      "notes": tuple(data.get("notes", ())), "network": BenchNetwork.from_dict(data.get("network"))})

    def with_rows(self, rows) -> "ConvergeResult":
        return replace(self, rows=ranked(rows))
