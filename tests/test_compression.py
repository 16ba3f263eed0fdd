"""Compressors, in-process with literal values (asyncddp.optim.compression)."""

import pytest
import torch

from asyncddp.errors import OptimizerError
from asyncddp.optim.compression import CHUNK, parse_compressor


def _round_trip(spec, x, seed=7):
    c = parse_compressor(spec)
    payload = c.compress(x, seed)
    assert payload.dtype == torch.uint8 and payload.dim() == 1
    assert payload.numel() == c.nbytes(x.numel(), x.dtype)
    return c.decompress(payload, x.numel(), x.dtype, seed)


def test_topk_keeps_the_largest_magnitudes():
    x = torch.tensor([0.5, -4.0, 1.0, 3.0, -0.25, 2.0, 0.0, -1.5, 0.1, 0.2])
    assert torch.equal(_round_trip("topk:0.3", x),
                       torch.tensor([0.0, -4.0, 0.0, 3.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]))
    # k = round(F·n), at least 1: indices (int32) and values (float32) only, 8 bytes per entry.
    assert parse_compressor("topk:0.3").nbytes(10, torch.float32) == 24
    assert parse_compressor("topk:0.01").nbytes(10, torch.float32) == 8
    assert parse_compressor("topk:0.01").nbytes(1_000_000, torch.float32) == 80_000
    assert parse_compressor("topk:0.01").nbytes(1_000_000, torch.float64) == 120_000
    assert torch.equal(_round_trip("topk:1", x), x)


def test_topk_float64_and_float16_payloads():
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = torch.tensor([1.0, -8.0, 2.0, 4.0, 0.5], dtype=dtype)
        assert torch.equal(_round_trip("topk:0.4", x), torch.tensor([0, -8.0, 0, 4.0, 0], dtype=dtype))


def test_randk_is_reproducible_from_the_seed_and_sends_no_indices():
    x = torch.arange(1.0, 101.0)
    c = parse_compressor("randk:0.1")
    payload = c.compress(x, seed=42)
    assert payload.numel() == 10 * 4  # values only
    # The receiver, with the seed alone, puts each value back where it came from.
    dense = c.decompress(payload.clone(), 100, torch.float32, seed=42)
    kept = dense != 0
    assert kept.sum().item() == 10
    assert torch.equal(dense[kept], x[kept])
    assert torch.equal(c.compress(x, seed=42), payload)
    assert not torch.equal(c.compress(x, seed=43), payload)


@pytest.mark.parametrize(("spec", "levels"), [("int8", 127), ("int4", 7)])
def test_quantizers_error_is_below_the_chunk_scale(spec, levels):
    g = torch.Generator().manual_seed(0)
    n = 2 * CHUNK + 37  # a partial last chunk
    x = torch.randn(n, generator=g)
    x[CHUNK:2 * CHUNK] *= 100.0  # each chunk its own scale
    y = _round_trip(spec, x)
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        scale = x[part].abs().max() / levels
        assert (y[part] - x[part]).abs().max() < scale * (1 + 1e-6)
    bytes_ = parse_compressor(spec).nbytes(n, torch.float32)
    assert bytes_ == 4 * 3 + (n if spec == "int8" else (n + 1) // 2)


def test_quantizers_round_stochastically_without_bias():
    x = torch.full((CHUNK,), 0.3)
    x[0] = 1.0  # scale 1/127: 0.3 is 38.1 levels, rounded to 38 or 39
    c = parse_compressor("int8")
    mean = torch.stack([c.decompress(c.compress(x, s), CHUNK, torch.float32, s) for s in range(50)]).mean()
    assert abs(mean.item() - x.mean().item()) < 1e-4
    assert c.decompress(c.compress(x, 0), CHUNK, torch.float32)[0].item() == pytest.approx(1.0)


def test_int4_packs_two_values_per_byte():
    x = torch.tensor([7.0, -7.0, 0.0, 7.0, -7.0])  # exact levels: no rounding
    c = parse_compressor("int4")
    payload = c.compress(x)
    assert payload.numel() == 4 + 3
    assert payload[4:].tolist() == [15 | (1 << 4), 8 | (15 << 4), 1 | (8 << 4)]
    assert torch.equal(c.decompress(payload, 5, torch.float32), x)


def test_sign_sends_one_bit_and_the_mean_magnitude():
    x = torch.tensor([1.0, -2.0, 3.0, -4.0, 0.0, 6.0, -1.0, 1.0, 2.0])
    c = parse_compressor("sign")
    payload = c.compress(x)
    assert payload.numel() == 4 + 2
    assert payload[4:].tolist() == [0b10110101, 0b1]
    scale = x.abs().mean().item()
    assert torch.allclose(c.decompress(payload, 9, torch.float32),
                          scale * torch.tensor([1.0, -1, 1, -1, 1, 1, -1, 1, 1]))


def test_identity_payload_is_the_raw_values():
    x = torch.tensor([1.5, -2.0], dtype=torch.float64)
    assert parse_compressor("identity").nbytes(2, torch.float64) == 16
    assert torch.equal(_round_trip("identity", x), x)


@pytest.mark.parametrize("spec", ["topk:0", "topk:1.5", "randk:-1", "topk:x", "topk", "int3", "gzip", 3])
def test_bad_specs_name_the_option(spec):
    with pytest.raises(OptimizerError, match=r"compressor=") as info:
        parse_compressor(spec)
    assert repr(spec) in str(info.value)


def test_topk_on_a_large_tensor_matches_a_full_topk():
    # Above 4·65536 entries the threshold is guessed from a sample; the result must stay exact,
    # also when the sample misleads (a periodic tensor whose strided sample sees only zeros).
    g = torch.Generator().manual_seed(1)
    c = parse_compressor("topk:0.01")
    x = torch.randn(400_000, generator=g)
    periodic = torch.zeros(400_000)
    periodic[1::6] = torch.arange(1.0, 66668.0)[:periodic[1::6].numel()]
    for tensor in (x, periodic):
        dense = c.decompress(c.compress(tensor), tensor.numel(), tensor.dtype)
        kept = set(dense.nonzero().view(-1).tolist())
        assert kept == set(tensor.abs().topk(4000).indices.tolist())


def test_randk_draws_k_distinct_indices_spread_over_the_tensor():
    c = parse_compressor("randk:0.01")
    x = torch.arange(1.0, 100_001.0)
    dense = c.decompress(c.compress(x, 3), 100_000, torch.float32, 3)
    kept = dense.nonzero().view(-1)
    assert kept.numel() == 1000  # distinct: one per stratum of 100
    assert torch.equal(kept // 100, torch.arange(1000))
