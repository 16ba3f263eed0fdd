"""CUDA tensors and MPI: pass device memory when MPI is CUDA-aware, stage through pinned host memory otherwise.

``mpi_is_cuda_aware()`` asks the MPI library at run time (mpi4py's ``MPI.Query_cuda_support`` when
present, then Open MPI's ``ompi_info --parsable --all``, then MPICH's ``MPIR_CVAR_ENABLE_GPU``);
``ASYNCDDP_CUDA_AWARE=0/1`` overrides the answer. Staging copies are chunked: ``to_host`` queues
one asynchronous device-to-host copy per chunk, each followed by a CUDA event, and
``ready_chunks`` yields the chunks as their copies land, so the caller can send chunk k while
the copy of chunk k+1 is still running. ``from_host`` copies back asynchronously, chunk by chunk.
Nothing here imports CUDA state at import time; CPU-only machines never touch it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import torch

from asyncddp import exported_by
from asyncddp.comm.env import env_flag, env_int

__all__ = [
    *exported_by(__name__),
    "CHUNK_ENV",
    "chunk_bytes",
    "is_cuda",
    "to_host",
    "ready_chunks",
    "from_host",
    "chunk_ranges",
    "parse_ompi_info_cuda",
]

CHUNK_ENV = "ASYNCDDP_CHUNK_BYTES"
AWARE_ENV = "ASYNCDDP_CUDA_AWARE"
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024


def chunk_bytes() -> int:
    """Bytes per pipelined message chunk (``ASYNCDDP_CHUNK_BYTES``, default 4 MiB, at least 4 KiB:
    smaller chunks would cost more in per-message overhead than any pipelining wins)."""
    return env_int(CHUNK_ENV, DEFAULT_CHUNK_BYTES, minimum=4096,
                   expected="a chunk size in bytes (an integer of at least 4096)")


def chunk_ranges(nbytes: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """[(start, stop)] byte ranges covering ``nbytes``; at least one (possibly empty) range."""
    chunk = chunk or chunk_bytes()
    if nbytes <= chunk:
        return [(0, nbytes)]
    return [(s, min(s + chunk, nbytes)) for s in range(0, nbytes, chunk)]


def is_cuda(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cuda"


def _ompi_info_says_cuda() -> bool | None:
    exe = shutil.which("ompi_info")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--parsable", "--all"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_ompi_info_cuda(out)


def parse_ompi_info_cuda(text: str) -> bool | None:
    """``mpi_built_with_cuda_support`` from ``ompi_info --parsable --all`` output (None if absent)."""
    for line in text.splitlines():
        if "mpi_built_with_cuda_support:value" in line:
            return line.rstrip().endswith(":true")
    return None


@functools.lru_cache(maxsize=1)
def mpi_is_cuda_aware() -> bool:
    """Whether the MPI library in use accepts CUDA device pointers. Asked once per process."""
    forced = env_flag(AWARE_ENV, None)
    if forced is not None:
        return forced
    from mpi4py import MPI

    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        try:
            return bool(query())
        except Exception:  # noqa: BLE001 - an MPI without the extension answers by raising
            pass
    if "Open MPI" in MPI.Get_library_version():
        answer = _ompi_info_says_cuda()
        if answer is not None:
            return answer
    return os.environ.get("MPIR_CVAR_ENABLE_GPU", "").strip() == "1"


def to_host(tensor: torch.Tensor, chunk: int | None = None):
    """Start chunked asynchronous copies of a CUDA tensor into pinned host memory.

    Returns ``(host, events, ranges)``: a pinned uint8 tensor of the same bytes, one CUDA event
    per chunk and the chunks' byte ranges. Use ``ready_chunks`` or ``torch.cuda.Event.synchronize``
    before reading a chunk.
    """
    src = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    host = torch.empty(src.numel(), dtype=torch.uint8, pin_memory=True)
    ranges = chunk_ranges(src.numel(), chunk)
    stream = torch.cuda.current_stream(tensor.device)
    events = []
    for start, stop in ranges:
        host[start:stop].copy_(src[start:stop], non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        events.append(event)
    return host, events, ranges


def ready_chunks(events, ranges):
    """Yield ``(index, start, stop)`` for each chunk as soon as its copy has finished."""
    for index, (event, (start, stop)) in enumerate(zip(events, ranges)):
        event.synchronize()
        yield index, start, stop


def from_host(host: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A new tensor on ``like``'s device, dtype and shape holding ``host``'s bytes."""
    out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    dst = out.reshape(-1).view(torch.uint8)  # a view: ``out`` is fresh and contiguous
    src = host.reshape(-1).view(torch.uint8)
    if not src.is_pinned():
        src = src.pin_memory()
    for start, stop in chunk_ranges(src.numel()):
        dst[start:stop].copy_(src[start:stop], non_blocking=True)
    torch.cuda.current_stream(like.device).synchronize()
    return out
