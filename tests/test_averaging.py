"""The one averaging core: every dtype's arithmetic and the integer rounding rule (no MPI)."""

from fractions import Fraction

import pytest
import torch

from asyncddp.comm.averaging import as_dtype, combine, mean_, scaled


def _nearest(values, count):
    return [round(Fraction(v, count)) for v in values]  # Python rounds a Fraction half to even


def test_plain_integer_average_rounds_to_nearest_ties_to_even():
    x = torch.tensor([0, 1, 1, 2, -1, -2, -3, 5], dtype=torch.int32)
    r = torch.tensor([1, 2, 0, 1, -2, -1, 0, 0], dtype=torch.int32)
    out = combine(x, [r], uniform=True)
    assert out.dtype == torch.int32
    assert out.tolist() == _nearest((x + r).tolist(), 2) == [0, 2, 0, 2, -2, -2, -2, 2]
    three = combine(x, [r, r], uniform=True)
    assert three.tolist() == _nearest((x + 2 * r).tolist(), 3)


def test_plain_integer_average_is_exact_beyond_float64():
    big = 2**60 + 1  # not a float64 (a float computation would lose the +1); 3 * big fits int64
    x = torch.tensor([big, -big], dtype=torch.int64)
    out = combine(x, [x.clone(), x.clone()], uniform=True)
    assert out.tolist() == [big, -big]
    total = torch.tensor([3 * big, 7], dtype=torch.int64)
    assert mean_(total, 3).tolist() == [big, 2]


def test_weighted_integer_combination_rounds_not_truncates():
    x = torch.tensor([14], dtype=torch.int64)
    out = combine(x, [torch.tensor([7])], 1 / 3, [1 / 3])  # 6.999... in float64
    assert out.tolist() == [7]
    # Ties go to even in the weighted path too.
    half = combine(torch.tensor([1, 3], dtype=torch.int16), [torch.tensor([0, 0], dtype=torch.int16)], 0.5, [1.0])
    assert half.dtype == torch.int16 and half.tolist() == [0, 2]


def test_scaled_and_as_dtype_round_integers():
    assert scaled(torch.tensor([5, 7], dtype=torch.int32), 0.5).tolist() == [2, 4]
    assert scaled(torch.tensor([5, 7], dtype=torch.int32), 1 / 3).tolist() == [2, 2]
    x = torch.tensor([1.0])
    assert scaled(x, 1.0) is x
    assert as_dtype(torch.tensor([2.5, 3.5, -2.5]), torch.int64).tolist() == [2, 4, -2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_floats_sum_first_then_divide_in_their_work_dtype(dtype):
    eps = 2.0**-52 if dtype == torch.float64 else 0.0
    values = [3 * (1.0 + eps * j) for j in range(3)]
    x, *received = [torch.tensor([v], dtype=dtype) for v in values]
    out = combine(x, received, uniform=True)
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    want = (sum(torch.tensor([v], dtype=dtype).to(work) for v in values) / 3).to(dtype)
    assert out.dtype == dtype and torch.equal(out, want)


def test_out_is_written_and_never_aliases_x_without_it():
    x = torch.tensor([1.0, 2.0, 3.0])
    received = [torch.tensor([3.0, 4.0, 5.0])]
    new = combine(x, received, 0.25, [0.75])
    assert new.data_ptr() != x.data_ptr() and x.tolist() == [1.0, 2.0, 3.0]
    assert combine(x, received, 0.25, [0.75], out=x) is x and torch.equal(x, new)
    # A non-contiguous integer out is written through a copy.
    q = torch.arange(6, dtype=torch.int64).reshape(2, 3).t()
    got = combine(q, [q.contiguous() * 3], uniform=True, out=q)
    assert got is q and q.tolist() == (torch.arange(6).reshape(2, 3).t() * 2).tolist()
