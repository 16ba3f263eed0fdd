"""The arithmetic of every average in asyncddp: one place, one rounding rule.

``neighbor_allreduce`` (and its hierarchical form), ``win_update``, ``win_put``'s weights and the
``average=True`` of ``allreduce``/``reduce_scatter`` all compute here, so that a value averaged one
way equals the same value averaged another, dtype for dtype:

* float32/float64 are combined in their own dtype; float16/bfloat16 in float32 (a half-precision
  sum would round at every term), cast back once at the end.
* Integers: a plain average (every term weight 1, then divided by the count) is summed exactly in
  int64; a weighted combination is computed in float64. Either result is **rounded to the nearest
  integer, ties to even** (``torch.round``'s rule). Truncating would turn ``14/3 + 7/3``, which is
  ``6.999...`` in float64, into 6, and would make the average of 1 and 2 differ from that of -1
  and -2 by more than the sign.
* A plain average is ``(x + Σ r_j) / count``: sum first, then divide, which is exact where
  multiplying by ``1/count`` first would round.

``combine`` computes ``self_weight·x + Σ w_j·r_j`` (or the plain average) from the caller's own
tensor and the buffers that arrived; callers differ only in where those buffers live.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["work_dtype", "as_dtype", "scaled", "mean_", "combine"]

# The result can be accumulated in place in the output's own memory: arithmetic in this dtype is
# what the general path would do anyway (numpy ufuncs on them give torch's results bit for bit).
_SAME_DTYPE_MATH = (torch.float32, torch.float64)


_HALF = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def work_dtype(dtype: torch.dtype, exact_sum: bool = False) -> torch.dtype:
    """The dtype values of ``dtype`` are combined in (``exact_sum``: weights are all 1)."""
    if dtype.is_floating_point:
        return _HALF.get(dtype, dtype)
    return torch.int64 if exact_sum else torch.float64


def as_dtype(acc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``acc`` in ``dtype``; a floating ``acc`` bound for an integer dtype is rounded first."""
    if acc.dtype == dtype:
        return acc
    if acc.dtype.is_floating_point and not dtype.is_floating_point:
        acc = acc.round()
    return acc.to(dtype)


def scaled(x: torch.Tensor, weight: float) -> torch.Tensor:
    """``x * weight`` in ``x``'s dtype (``x`` itself for weight 1), computed in the work dtype."""
    if weight == 1.0:
        return x
    return as_dtype(x.to(work_dtype(x.dtype)) * weight, x.dtype)


def _nearest_div(total: torch.Tensor, count: int) -> torch.Tensor:
    """``total / count`` of an integer tensor, rounded to nearest with ties to even, exactly."""
    total = total.to(torch.int64)
    quotient = torch.div(total, count, rounding_mode="floor")
    twice_rest = (total - quotient * count) * 2  # 0 <= rest < count
    up = (twice_rest > count) | ((twice_rest == count) & (quotient.remainder(2) == 1))
    return quotient.add_(up)


def _divide_(x, count: int):
    """``x /= count`` in place (a float tensor, or a numpy array: cheaper to call on small data);
    for a power of two as ``x *= 1/count``, the same correctly rounded result (only the exponent
    changes) in less time than a division."""
    if isinstance(x, np.ndarray):
        if count & (count - 1) == 0:
            return np.multiply(x, 1.0 / count, out=x)
        return np.divide(x, count, out=x)
    if count & (count - 1) == 0:
        return x.mul_(1.0 / count)
    return x.div_(count)


def mean_(total, count: int):
    """``total / count`` written into ``total`` (returned): the average of ``count`` terms whose
    sum is ``total``. Integers round to nearest, ties to even. ``total``: a tensor, or the numpy
    view of a float tensor (cheaper when the caller has it already)."""
    if isinstance(total, np.ndarray):
        return _divide_(total, count)
    if total.dtype.is_floating_point:
        if total.is_cpu and total.dtype in _SAME_DTYPE_MATH and total.is_contiguous():
            _divide_(total.numpy(), count)
            return total
        return _divide_(total, count)
    return total.copy_(_nearest_div(total, count))


def _lerp_weight(x: torch.Tensor, self_weight: float, weights) -> float | None:
    """``w`` when the step is ``(1 - w)·x + w·r`` with one received buffer, else None. ``lerp``
    computes that as ``x + w·(r − x)`` in one pass over memory instead of two (the step is
    memory-bound); the result may differ from ``self_weight·x + w·r`` in the last bit, never more."""
    if len(weights) != 1 or x.dtype not in _SAME_DTYPE_MATH:
        return None
    return weights[0] if self_weight + weights[0] == 1.0 else None


def _accumulate_(acc: torch.Tensor, received, self_weight, weights, uniform: bool, arrays) -> torch.Tensor:
    """``acc`` (holding ``x`` in the work dtype, contiguous) becomes the combination, in place."""
    dtype = acc.dtype
    # numpy ufuncs cost a third of the torch call on the small tensors where call cost matters.
    mine = acc.numpy() if acc.is_cpu and dtype in _SAME_DTYPE_MATH else None
    if uniform:
        for index, r in enumerate(received):
            if mine is None:
                acc.add_(r.to(dtype))
            elif r.dtype == dtype and arrays is not None:
                np.add(mine, arrays[index], out=mine)
            else:
                np.add(mine, r.to(dtype).numpy(), out=mine)
        if mine is None:
            mean_(acc, len(received) + 1)
        else:
            _divide_(mine, len(received) + 1)
        return acc
    if self_weight != 1.0:
        if mine is not None:
            np.multiply(mine, self_weight, out=mine)
        else:
            acc.mul_(self_weight)
    for r, weight in zip(received, weights):
        acc.add_(r if r.dtype == dtype else r.to(dtype), alpha=weight)
    return acc


def combine(x: torch.Tensor, received, self_weight: float = 1.0, weights=(), *,
            uniform: bool = False, out: torch.Tensor | None = None, arrays=None) -> torch.Tensor:
    """``self_weight·x + Σ weights[j]·received[j]``, or with ``uniform`` the plain average of
    ``x`` and ``received`` (weights ignored).

    ``received``: a list of tensors of ``x``'s shape (any dtype that converts); ``weights``: a
    list of as many floats; ``arrays``: optionally, numpy views of ``received`` the caller has
    already (taking one costs about as much as adding two small tensors). The result has ``x``'s
    dtype; it is written into ``out`` (which may be ``x`` itself: ``x`` is read before it is
    written) and ``out`` returned, else a new tensor that never aliases ``x``. One pass over
    memory per term; float32/float64 outputs that are contiguous are accumulated in place.
    """
    if not uniform:
        lerp = _lerp_weight(x, self_weight, weights)
        if lerp is not None:
            if out is x:
                return x.lerp_(received[0].to(x.dtype), lerp)
            result = torch.lerp(x, received[0].to(x.dtype), lerp)
            return result if out is None else out.copy_(result)
    dtype = work_dtype(x.dtype, exact_sum=uniform)
    if out is not None and out.dtype == dtype and out.is_contiguous():
        if out is not x:
            out.copy_(x)
        return _accumulate_(out, received, self_weight, weights, uniform, arrays)
    acc = x.to(dtype, copy=True, memory_format=torch.contiguous_format)
    result = as_dtype(_accumulate_(acc, received, self_weight, weights, uniform, arrays), x.dtype)
    if out is None:
        return result
    with torch.no_grad():
        return out.copy_(result.view(out.shape))
