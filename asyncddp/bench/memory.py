"""Whether a bench's buffers can fit in this machine's memory, checked before any rank starts.

``bench comm -e 64G`` (a typo for 64M) would have every rank allocate several 64 GiB buffers and
take a shared machine down with the OOM killer. ``comm_bytes_per_byte`` is the memory one rank
of ``asyncddp.bench_ranks.comm_ops`` holds at its peak for an op (its buffers, asyncddp's receive
buffers and the check's float64 copies, as measured), and ``check_comm_memory`` refuses a
``--max-bytes`` whose largest op, times the ranks on this machine, exceeds the memory available
(``MemAvailable``, or the cgroup's limit when lower). ``check_batch_memory`` does the same for a
model bench's input batch alone. Both only refuse what cannot fit: a size that passes may still
be tight.
"""

from __future__ import annotations

import math
from pathlib import Path

from asyncddp.errors import ConfigError

__all__ = ["available_bytes", "comm_bytes_per_byte", "check_comm_memory", "check_batch_memory", "format_bytes"]

_FLOAT64 = 8  # the test patterns and expected values are computed in float64


def _meminfo_available(meminfo: str) -> int | None:
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable" and value.split() and value.split()[0].isdigit():
            return int(value.split()[0]) * 1024
    return None


def _cgroup_room(root: Path) -> int | None:
    """What this process's cgroup (v2) may still allocate, when it has a limit."""
    try:
        limit = (root / "memory.max").read_text().strip()
        used = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return max(0, int(limit) - used) if limit.isdigit() else None


def available_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory a new process can have without swapping: MemAvailable, capped by the cgroup's room;
    None where neither can be read (not Linux)."""
    try:
        available = _meminfo_available(meminfo.read_text())
    except OSError:
        available = None
    room = _cgroup_room(cgroup)
    known = [value for value in (available, room) if value is not None]
    return min(known) if known else None


def format_bytes(value: float) -> str:
    """``1.5 GiB``, ``832 MiB``, ``12 KiB`` (binary units, as the size flags read them)."""
    for unit, scale in (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{int(value)} B"


def _flag_size(value: int) -> str:
    """A ``--max-bytes`` value at most ``value``: the largest whole K, M or G below it."""
    for suffix, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if value >= scale:
            return f"{value // scale}{suffix}"
    return str(max(1, value))


def comm_bytes_per_byte(op: str, num_ranks: int, itemsize: int) -> float:
    """Bytes one rank of ``bench comm`` holds at its peak for ``op``, per byte of the size benchmarked.

    ``a + b·d + c·F``: ``d`` the Exp-2 degree (receive buffers, ours and raw), ``F`` = 8 / itemsize
    (the check's float64 patterns, expected values and comparison temporaries). Fitted to each op's
    peak resident memory (ru_maxrss at 64 MiB minus at 1 KiB) at 2 and 4 ranks, float32 and float64,
    and rounded down so that the check refuses only what cannot fit; allgather's size is the
    gathered total.
    """
    degree = max(1, (num_ranks - 1).bit_length())
    wide = _FLOAT64 / itemsize
    factors = {
        "neighbor_allreduce": 1 + 2 * degree + 5 * wide,  # measured 13.3 (float32, 2 ranks), 15.3 (4), 8.1 (float64)
        "neighbor_allreduce_one_peer": 5 + 3 * wide,  # 11.0, 11.0, 8.0
        "hierarchical_neighbor_allreduce": 1 + 5 * wide,  # one machine: 11.3, 11.3, 6.1
        "allreduce": 2 + 3 * wide,  # 8.0, 8.0, 5.0
        "allgather": 1.75 + 3 * wide,  # 8.3, 7.8, 5.1
        "broadcast": 1.75 + 2.25 * wide,  # 6.3, 6.3, 4.0
        "win_put": 1 + 3 * degree + 5 * wide,  # 14.3, 17.3, 9.1
    }
    return factors[op]


def check_comm_memory(ops: tuple[str, ...], max_bytes: int, num_ranks: int, itemsize: int, ranks_here: int,
                      available: int | None, flag_value: str) -> None:
    """ConfigError naming ``--max-bytes`` when its largest op, on ``ranks_here`` ranks, cannot fit
    in ``available`` bytes."""
    if available is None or ranks_here < 1 or not ops:
        return
    op = max(ops, key=lambda name: comm_bytes_per_byte(name, num_ranks, itemsize))
    factor = comm_bytes_per_byte(op, num_ranks, itemsize)
    needed = factor * max_bytes * ranks_here
    if needed <= available:
        return
    limit = math.floor(available / (factor * ranks_here))
    raise ConfigError(f"--max-bytes {flag_value}: {op} at that size needs about {format_bytes(needed)} on this "
                      f"machine ({factor:.3g} x the size per rank, {ranks_here} rank(s) here) and "
                      f"{format_bytes(available)} is available; give --max-bytes {_flag_size(limit)} or less")


def check_batch_memory(batch_size: int, image_size: int, ranks_here: int, available: int | None) -> None:
    """ConfigError naming ``--batch-size`` when the float32 input batch alone (3 x image x image
    per image), on ``ranks_here`` ranks, cannot fit in ``available`` bytes."""
    if available is None or ranks_here < 1:
        return
    per_image = 3 * image_size * image_size * 4
    needed = batch_size * per_image * ranks_here
    if needed <= available:
        return
    raise ConfigError(f"--batch-size {batch_size} --image-size {image_size}: the input batch alone needs "
                      f"{format_bytes(needed)} on this machine ({ranks_here} rank(s) here) and "
                      f"{format_bytes(available)} is available; give --batch-size "
                      f"{max(1, available // (per_image * ranks_here))} or less (or smaller images)")
