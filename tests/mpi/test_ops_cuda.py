"""CUDA tensors through the staged (pinned host, chunked) path; skipped without a GPU.

ASYNCDDP_TEST_DEVICE=cpu runs the same checks on CPU tensors (``scripts/gpu-check --dry-run`` does, so
the file is exercised on machines without a GPU); the staging bandwidth report stays CUDA-only.
"""

import os
import time

import pytest
import torch

import asyncddp as addp
from asyncddp.comm import device

DEVICE = os.environ.get("ASYNCDDP_TEST_DEVICE", "cuda")
if DEVICE not in ("cpu", "cuda"):
    raise ValueError(f"ASYNCDDP_TEST_DEVICE={DEVICE!r}: choose cpu or cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU")
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="host staging is for CUDA tensors")


def _dev():
    if DEVICE == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", addp.local_rank() % torch.cuda.device_count())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_neighbor_allreduce_cuda_multi_chunk(dtype):
    r, n = addp.rank(), addp.size()
    # > 4 MiB chunk for every dtype on CUDA: several pipelined chunks; CPU tensors are not chunked
    numel = 3 * 1024 * 1024 + 5 if DEVICE == "cuda" else 1029
    x = torch.full((numel,), 4 * r, dtype=dtype, device=_dev())
    out = addp.neighbor_allreduce(x)
    members = [r] + sorted({(r - 2**k) % n for k in range(n.bit_length()) if 2**k < n} - {r})
    expected = sum(4 * j for j in members) / len(members)
    assert out.device == x.device and out.dtype == dtype
    want = torch.full_like(x, expected if dtype.is_floating_point else int(expected))
    assert torch.equal(out, want)


def test_collectives_cuda():
    r, n = addp.rank(), addp.size()
    x = torch.full((1000,), float(r + 1), device=_dev())
    assert torch.equal(addp.allreduce(x, average=False), torch.full_like(x, n * (n + 1) / 2))
    assert torch.equal(addp.broadcast(x, 0), torch.ones_like(x))
    g = addp.allgather(x[: r + 1])
    assert g.device.type == DEVICE and g.numel() == n * (n + 1) // 2
    nb = addp.neighbor_allgather(x[:2])
    assert nb.device.type == DEVICE


def test_requested_backend_is_the_one_used():
    # NCCL carries the exchanges only when every rank has a GPU of its own; otherwise MPI does.
    wanted = os.environ.get("ASYNCDDP_BACKEND", "mpi")
    own_gpu = DEVICE == "cuda" and addp.local_size() <= torch.cuda.device_count()
    expected = "nccl" if wanted == "nccl" and own_gpu else "mpi"
    x = torch.full((8,), float(addp.rank()), device=_dev())
    out = addp.neighbor_allreduce(x)
    assert addp.comm_stats().backend == expected
    assert out.device == x.device


@cuda_only
def test_staging_bandwidth_report():
    r = addp.rank()
    x = torch.ones(64 * 1024 * 1024 // 4, device=_dev())
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        host, events, ranges = device.to_host(x)
        for _ in device.ready_chunks(events, ranges):
            pass
    d2h = 5 * x.numel() * 4 / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    for _ in range(5):
        device.from_host(host, x)
    h2d = 5 * x.numel() * 4 / (time.perf_counter() - start) / 1e9
    addp.barrier()
    start = time.perf_counter()
    for _ in range(5):
        addp.neighbor_allreduce(x)
    nar = 5 * x.numel() * 4 / (time.perf_counter() - start) / 1e9
    print(f"\n[rank {r}] staging D2H {d2h:.1f} GB/s, H2D {h2d:.1f} GB/s, "
          f"neighbor_allreduce 64 MB CUDA {nar:.2f} GB/s (aware={device.mpi_is_cuda_aware()})")
    assert d2h > 0 and h2d > 0
