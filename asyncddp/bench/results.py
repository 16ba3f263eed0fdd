"""Typed options and results of ``asyncddp bench``: options in, rows and a summary out.

``CommBenchOptions`` is what the CLI parses and the ranks receive (as JSON); ``CommRow`` is one
(op, size) line of the nccl-tests-style table, with the raw-mpi4py baseline for the same bytes;
``CommBenchResult`` is the whole run, and ``OnePeerComparison`` one size's one-peer step against
allreduce derived from it. The model and straggler benches' options and results follow. All
frozen, all with ``to_dict()`` (what ``--json`` prints), each result with the ``BenchNetwork`` it
ran on when that was an emulated cluster.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from asyncddp.bench.errors import BandwidthBelowBound, BenchError
from asyncddp.bench.methods import DEFAULT_SYNC_EVERY, METHOD_NAMES
from asyncddp.bench.network import BenchNetwork
from asyncddp.errors import ConfigError

__all__ = ["BenchError", "BandwidthBelowBound", "OPS", "DTYPES", "ITEMSIZE", "CommBenchOptions", "CommRow", "OnePeerComparison",
           "CommBenchResult",
           "parse_size", "size_steps", "parse_ops", "bus_factor", "MODELS", "METHODS", "ModelBenchOptions", "ModelRun",
           "ModelBenchResult", "StragglerOptions", "StragglerResult", "parse_methods", "parse_num_ranks"]

# The ops ``bench comm`` knows, in table order.
# What rank 0 prints for the parent (asyncddp.bench.runner) to parse, each followed by one JSON
# object: the result also travels on stdout because a rank 0 on another host cannot write the
# parent's result file.
PROGRESS_TAG = "ASYNCDDP_BENCH_PROGRESS"
RESULT_TAG = "ASYNCDDP_BENCH_RESULT"
ERROR_TAG = "ASYNCDDP_BENCH_ERROR"  # any rank: {"type", "message"} of an error raised on purpose (a bad task)

OPS = ("neighbor_allreduce", "neighbor_allreduce_one_peer", "hierarchical_neighbor_allreduce", "allreduce", "allgather",
       "broadcast", "win_put")
DTYPES = ("float32", "float64")  # MPI reduces these natively on both sides (ours and raw numpy)
ITEMSIZE = {"float32": 4, "float64": 8}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[bB]?\s*$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str, flag: str) -> int:
    """Bytes from ``1024``, ``1K``, ``64M`` or ``1G`` (binary units); ConfigError names ``flag``."""
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"{flag} {text!r}: give a byte count like 1024, 1K, 64M or 1G")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < 1:
        raise ConfigError(f"{flag} {text!r}: the size must be at least 1 byte")
    return value


def size_steps(min_bytes: int, max_bytes: int, step_factor: int) -> tuple[int, ...]:
    """min, min·f, min·f², ... up to max (nccl-tests' ``-b -e -f``)."""
    if min_bytes > max_bytes:
        raise ConfigError(f"--min-bytes {min_bytes} is larger than --max-bytes {max_bytes}; swap them")
    if step_factor < 2:
        raise ConfigError(f"--step-factor {step_factor}: give an integer of at least 2")
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= step_factor
    return tuple(sizes)


def _parse_subset(items: list[str] | None, choices: tuple[str, ...], flag: str, what: str) -> tuple[str, ...]:
    """A subset of ``choices`` given comma-separated or repeated, in table order; all when not given."""
    names = [part.strip() for item in items or () for part in item.split(",") if part.strip()]
    if items and not names:  # ``--methods ''`` (an unset variable in a script) must not mean "all"
        raise ConfigError(f"{flag} {','.join(items)!r} names no {what.split()[-1]}; choose from {', '.join(choices)} "
                          f"(leave {flag} out for all)")
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise ConfigError(f"{flag} {unknown[0]!r} is not {what}; choose from {', '.join(choices)}")
    return tuple(name for name in choices if name in names) if names else choices


def parse_ops(items: list[str] | None) -> tuple[str, ...]:
    """The ``--ops`` subset (comma-separated or repeated), in table order; all when not given."""
    return _parse_subset(items, OPS, "--ops", "a benchmarked op")


def bus_factor(op: str, num_ranks: int, degree: int) -> float:
    """busbw / algbw, nccl-tests' convention extended to neighbour ops.

    allreduce 2(n-1)/n and allgather (n-1)/n as in nccl-tests; broadcast and one-peer 1 (each rank
    sends and receives S once). Static Exp-2 ``neighbor_allreduce`` and ``win_put``: ``degree``
    (the out-degree, ceil(log2 n)) because every rank sends S to each of its out-neighbours, so
    busbw is the bytes each rank puts on the wire per second. ``hierarchical_neighbor_allreduce``:
    ``degree`` is the machine topology's out-degree, since each machine's leader sends S to every
    out-neighbour machine (the traffic between machines, which is what the op is built to cut); on
    one machine (degree 0) it is an allreduce of the machine's ranks, and counts as one.
    """
    n = num_ranks
    if op == "allreduce" or (op == "hierarchical_neighbor_allreduce" and degree == 0):
        return 2 * (n - 1) / n
    if op == "allgather":
        return (n - 1) / n
    if op in ("neighbor_allreduce", "win_put", "hierarchical_neighbor_allreduce"):
        return float(degree)
    return 1.0


def _with_lists(record, *names: str) -> dict:
    """``asdict(record)`` with its tuple fields ``names`` as lists, as JSON has them."""
    data = asdict(record)
    data.update({name: list(getattr(record, name)) for name in names})
    return data


def _with_tuples(data: dict, *names: str) -> dict:
    """The fields of ``data`` with the lists ``names`` back as tuples (missing ones empty)."""
    return {**data, **{name: tuple(data.get(name, ())) for name in names}}


@dataclass(frozen=True)
class CommBenchOptions:
    num_ranks: int = 2
    sizes: tuple[int, ...] = ()
    iters: int = 20
    warmup: int = 5
    dtype: str = "float32"
    ops: tuple[str, ...] = OPS
    device: str = "cpu"
    progress: bool = True  # rank 0 prints one progress line per finished row

    def to_dict(self) -> dict:
        return _with_lists(self, "sizes", "ops")

    @classmethod
    def from_dict(cls, data: dict) -> "CommBenchOptions":
        return cls(**_with_tuples(data, "sizes", "ops"))


@dataclass(frozen=True)
class CommRow:
    """One op at one size. Times are the slowest rank's mean per iteration."""

    op: str
    size_bytes: int  # nccl-tests' "size": for allgather the gathered total, else one buffer
    count: int  # elements per rank's buffer
    dtype: str
    time_us: float
    algbw_gbs: float
    busbw_gbs: float
    num_wrong: int  # elements differing from the independently computed expected value, all ranks
    raw_time_us: float  # raw mpi4py moving the same bytes to the same peers
    raw_busbw_gbs: float
    ratio: float  # time_us / raw_time_us: 1.10 means ours takes 10% longer than raw mpi4py
    # The same operation hand-written in mpi4py + numpy: for the neighbour ops Sendrecv and then
    # the same weighted average in place (raw_time_us only moves the bytes); for the other ops
    # the raw baseline already is the whole operation, so these equal raw_time_us and ratio.
    # 0.0 in results written before the field existed.
    raw_op_time_us: float = 0.0
    op_ratio: float = 0.0  # time_us / raw_op_time_us

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OnePeerComparison:
    """One size: one-peer neighbour averaging against an allreduce of the same buffer.

    ``speedup`` = allreduce time / one-peer time (ours); ``raw_speedup`` the same for the raw
    mpi4py baselines (``Allreduce`` against one ``Sendrecv``), the ceiling the network allows:
    a ring allreduce sends 2(n-1)/n x S per rank, one peer S.
    """

    size_bytes: int
    allreduce_us: float
    one_peer_us: float
    speedup: float
    raw_allreduce_us: float
    raw_one_peer_us: float
    raw_speedup: float

    @classmethod
    def of(cls, one_peer: CommRow, allreduce: CommRow) -> "OnePeerComparison":
        return cls(size_bytes=allreduce.size_bytes, allreduce_us=allreduce.time_us, one_peer_us=one_peer.time_us,
                   speedup=round(allreduce.time_us / one_peer.time_us, 3),
                   raw_allreduce_us=allreduce.raw_time_us, raw_one_peer_us=one_peer.raw_time_us,
                   raw_speedup=round(allreduce.raw_time_us / one_peer.raw_time_us, 3))


@dataclass(frozen=True)
class CommBenchResult:
    num_ranks: int
    device: str
    dtype: str
    iters: int
    warmup: int
    rows: tuple[CommRow, ...] = field(default_factory=tuple)
    host: str = ""
    mpi_library: str = ""
    notes: tuple[str, ...] = ()  # how the launch was adjusted (e.g. oversubscribed ranks yield)
    network: BenchNetwork | None = None  # the emulated cluster, None on real hosts

    @property
    def avg_busbw_gbs(self) -> float:
        return sum(row.busbw_gbs for row in self.rows) / len(self.rows) if self.rows else 0.0

    @property
    def num_wrong(self) -> int:
        return sum(row.num_wrong for row in self.rows)

    @property
    def num_runs(self) -> int:
        return len(self.rows)

    def failures(self) -> tuple[str, ...]:
        """The (op, size) rows with wrong values (see ``asyncddp.bench.outcome``)."""
        return tuple(f"{row.op} at {row.size_bytes} B: {row.num_wrong} wrong values" for row in self.rows
                     if row.num_wrong)

    def one_peer_vs_allreduce(self) -> tuple[OnePeerComparison, ...]:
        """Per size benchmarked with both ops: allreduce's time over one-peer averaging's."""
        one_peer = {row.size_bytes: row for row in self.rows if row.op == "neighbor_allreduce_one_peer"}
        return tuple(OnePeerComparison.of(one_peer[row.size_bytes], row) for row in self.rows
                     if row.op == "allreduce" and row.size_bytes in one_peer)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rows"] = [row.to_dict() for row in self.rows]
        data["notes"] = list(self.notes)
        data["network"] = self.network.to_dict() if self.network else None
        data["avg_busbw_gbs"] = self.avg_busbw_gbs
        data["num_wrong"] = self.num_wrong
        data["one_peer_vs_allreduce"] = [asdict(item) for item in self.one_peer_vs_allreduce()]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "CommBenchResult":
        from asyncddp.bench.outcome import without_outcome

        rows = tuple(CommRow(**row) for row in data["rows"])
        derived = ("rows", "avg_busbw_gbs", "num_wrong", "one_peer_vs_allreduce")
        keep = {k: v for k, v in without_outcome(data).items() if k not in derived}
        keep["notes"] = tuple(keep.get("notes", ()))
        keep["network"] = BenchNetwork.from_dict(keep.get("network"))
        return cls(**keep, rows=rows)


# ---- bench MODEL -------------------------------------------------------------------------------
MODELS = ("resnet18", "resnet50", "vgg16", "mobilenet_v3", "transformer", "mlp")
# Table order: the compute-only ceiling, the peer a user would pick instead, then ours
# (the registry of ``asyncddp.bench.methods``).
METHODS = METHOD_NAMES


def parse_methods(items: list[str] | None) -> tuple[str, ...]:
    """The ``--methods`` subset (comma-separated or repeated), in table order; all when not given."""
    return _parse_subset(items, METHODS, "--methods", "a method")


def parse_num_ranks(text: str) -> tuple[int, ...]:
    """``--np 1,2,4`` as sorted distinct positive rank counts."""
    try:
        counts = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise ConfigError(f"--np {text!r}: give positive rank counts separated by commas, e.g. 1,2,4")
    return tuple(counts)


@dataclass(frozen=True)
class ModelBenchOptions:
    """One (method, np) run's settings; the parent sends it to the ranks as JSON."""

    model: str = "resnet50"
    method: str = "local"
    num_ranks: int = 1
    batch_size: int = 32
    image_size: int = 224
    warmup: int = 2
    iters: int = 10
    device: str = "cpu"
    sync_every: int = DEFAULT_SYNC_EVERY  # local steps per outer step (local-sgd, diloco-*)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelRun:
    """One (method, np) launch. Times are means over ranks of each rank's mean timed iteration.

    ``compute_ms`` is the same rank's mean iteration of plain forward/backward/SGD on the same model
    and batch, timed in the same job just before the wrapper is installed; ``comm_share`` =
    max(0, 1 − compute/iteration): the share of an iteration spent on communication that was not
    hidden behind computation (0 for ``local`` up to timing noise).
    """

    method: str
    num_ranks: int
    img_s_total: float = 0.0
    img_s_per_rank: float = 0.0
    iter_ms: float = 0.0
    compute_ms: float = 0.0
    comm_share: float = 0.0
    iter_ms_per_rank: tuple[float, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return _with_lists(self, "iter_ms_per_rank", "notes")

    @classmethod
    def from_dict(cls, data: dict) -> "ModelRun":
        return cls(**_with_tuples(data, "iter_ms_per_rank", "notes"))


@dataclass(frozen=True)
class ModelBenchResult:
    model: str
    device: str
    batch_size: int
    image_size: int
    warmup: int
    iters: int
    num_parameters: int = 0
    runs: tuple[ModelRun, ...] = ()
    host: str = ""
    network: BenchNetwork | None = None  # the emulated cluster, None on real hosts

    @property
    def num_runs(self) -> int:
        return len(self.runs)

    def failures(self) -> tuple[str, ...]:
        """Each failed (method, np) run's error, which names the run (see ``asyncddp.bench.outcome``)."""
        return tuple(run.error for run in self.runs if run.error is not None)

    def find(self, method: str, num_ranks: int) -> ModelRun | None:
        return next((r for r in self.runs if r.method == method and r.num_ranks == num_ranks and r.ok), None)

    def derived(self, run: ModelRun) -> dict:
        """Scaling efficiency vs the same method at np=1 and vs ``local`` at this np; speed vs ``ddp``."""
        def ratio(other: ModelRun | None, scale: float = 1.0):
            if not run.ok or other is None or other.img_s_total <= 0:
                return None
            return run.img_s_total / (other.img_s_total * scale)

        base = self.find(run.method, 1)
        return {"efficiency_vs_np1": ratio(base, run.num_ranks / base.num_ranks) if base else None,
                "efficiency_vs_local": ratio(self.find("local", run.num_ranks)),
                "speed_vs_ddp": ratio(self.find("ddp", run.num_ranks))}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["runs"] = [{**run.to_dict(), **self.derived(run)} for run in self.runs]
        data["network"] = self.network.to_dict() if self.network else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelBenchResult":
        from asyncddp.bench.outcome import without_outcome

        derived = ("efficiency_vs_np1", "efficiency_vs_local", "speed_vs_ddp")
        runs = tuple(ModelRun.from_dict({k: v for k, v in run.items() if k not in derived}) for run in data["runs"])
        return cls(**{**without_outcome(data), "runs": runs, "network": BenchNetwork.from_dict(data.get("network"))})


# ---- bench straggler ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StragglerOptions:
    num_ranks: int = 4
    slow_rank: int = 1
    slow_factor: float = 2.0
    model: str = "mlp"
    batch_size: int = 32
    image_size: int = 32
    iters: int = 30
    warmup: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StragglerResult:
    """Fast ranks' img/s under synchronous neighbour averaging and asynchronous win-put.

    ``*_consensus_error`` is max over ranks of ‖x_i − x̄‖ / ‖x̄‖ over all parameters after the last
    step (x̄ the average over ranks); a window-put run is measured after every rank has finished.
    """

    options: StragglerOptions
    sync_fast_img_s: float
    async_fast_img_s: float
    sync_slow_img_s: float
    async_slow_img_s: float
    sync_consensus_error: float
    async_consensus_error: float
    notes: tuple[str, ...] = ()
    network: BenchNetwork | None = None  # the emulated cluster, None on real hosts

    num_runs = 1  # one job, both phases; a failed job raises instead of returning a result

    def failures(self) -> tuple[str, ...]:
        return ()

    @property
    def speedup(self) -> float:
        return self.async_fast_img_s / self.sync_fast_img_s if self.sync_fast_img_s > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["network"] = self.network.to_dict() if self.network else None
        data["speedup"] = self.speedup
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "StragglerResult":
        from asyncddp.bench.outcome import without_outcome

        keep = {k: v for k, v in without_outcome(data).items() if k != "speedup"}
        return cls(**{**keep, "options": StragglerOptions(**data["options"]),
                      "notes": tuple(data.get("notes", ())), "network": BenchNetwork.from_dict(data.get("network"))})
