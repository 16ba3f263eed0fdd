"""Torch tensors as MPI buffers, without copies where the memory allows it.

MPI knows no bfloat16 and (portably) no float16, so tensors are handed to point-to-point calls and
windows as raw bytes, and reductions of half-precision tensors run in float32 (which also avoids
the rounding a half-precision sum would accumulate). Only host memory is handled here; CUDA
tensors go through the device module's direct or staged path first.
"""

from __future__ import annotations

import numpy as np
import torch

from asyncddp.errors import CommError

__all__ = [
    "SUPPORTED_DTYPES",
    "check_dtype",
    "byte_view",
    "numpy_view",
    "reduction_dtype",
    "contiguous_copy",
    "is_direct_cpu",
    "plain",
    "host_empty",
]

SUPPORTED_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.bool,
)

# Dtypes numpy (and therefore mpi4py's typed buffers) cannot represent natively.
_NO_NUMPY = {torch.bfloat16: torch.int16}


def check_dtype(tensor: torch.Tensor, op: str) -> None:
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise CommError(
            f"{op}: dtype {tensor.dtype} is not supported; use one of "
            + ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        )


def byte_view(tensor: torch.Tensor) -> np.ndarray:
    """A uint8 numpy view sharing memory with a contiguous CPU tensor (any dtype)."""
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise CommError("internal: byte_view needs a contiguous CPU tensor")
    return tensor.reshape(-1).view(torch.uint8).numpy()


def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """A typed numpy view sharing memory with a contiguous CPU tensor (not for bfloat16)."""
    if tensor.dtype in _NO_NUMPY:
        raise CommError(f"internal: {tensor.dtype} has no numpy equivalent; reduce in float32")
    return tensor.reshape(-1).numpy()


def reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a sum of ``dtype`` values is computed in across ranks."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def contiguous_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A fresh contiguous copy: results never alias the caller's input."""
    return tensor.detach().clone(memory_format=torch.contiguous_format)


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s data, contiguous and outside autograd: the tensor itself when it already is
    (a blocking op on a small tensor costs a few microseconds; a detached alias is one more)."""
    if tensor.is_contiguous() and not tensor.requires_grad:
        return tensor
    return tensor.detach().contiguous()


def is_direct_cpu(tensor, dtypes) -> bool:
    """True when MPI may work on ``tensor``'s own memory: one of ``dtypes``, contiguous, on the
    CPU, outside autograd (tensors that require grad keep the copying paths, whose ``copy_``
    autograd sees and refuses for leaves)."""
    return (
        isinstance(tensor, torch.Tensor)
        and tensor.dtype in dtypes
        and tensor.is_cpu
        and tensor.is_contiguous()
        and not tensor.requires_grad
    )


# numpy asks the kernel for transparent huge pages (madvise) on arrays of 4 MiB and more;
# torch's CPU allocator does not unless THP_MEM_ALLOC_ENABLE=1. MPI's copies into and out of
# huge-page memory measured 10-20% faster here, and a fresh 64 MiB result faults in 32 pages
# instead of 16384 (an allgather of 64 MiB: 17 ms against 33 ms on torch.empty memory).
_HUGE_PAGE_BYTES = 2 << 20


def host_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; at 2 MiB and more backed by numpy memory (huge pages).

    Such tensors cannot be ``resize_``d (numpy owns the storage); everything else works as
    usual. Used for receive buffers and for results MPI writes into.
    """
    size = torch.Size(shape)
    nbytes = size.numel() * dtype.itemsize
    if nbytes < _HUGE_PAGE_BYTES:
        return torch.empty(size, dtype=dtype)
    return torch.from_numpy(np.empty(nbytes, dtype=np.uint8)).view(dtype).view(size)
