"""Compressors: what a rank sends instead of a dense tensor, as packed bytes.

A compressor turns a 1-D floating tensor into a ``uint8`` payload (``compress``) and back into a
dense tensor of the same length (``decompress``); the payload is what goes over the wire, and its
length is a function of the element count and dtype alone (``nbytes``), so a receiver knows how
many bytes to expect without a header. ``n`` elements of ``b`` bytes each:

=============  =============================================  ==========================================
spec           payload                                        bytes
=============  =============================================  ==========================================
``identity``   the values                                     ``n·b``
``topk:F``     the ``k`` largest magnitudes: indices, values  ``k·(4 + b)``, ``k = max(1, round(F·n))``
``randk:F``    ``k`` values at indices drawn from a seed      ``k·b`` (no indices: both ends draw them)
``int8``       per-1024-chunk scale, 8-bit stochastic round   ``4·⌈n/1024⌉ + n``
``int4``       per-1024-chunk scale, 4-bit stochastic round   ``4·⌈n/1024⌉ + ⌈n/2⌉``
``sign``       per-1024-chunk mean magnitude, one bit each    ``4·⌈n/1024⌉ + ⌈n/8⌉``
=============  =============================================  ==========================================

The quantizers round stochastically (unbiased: ``E[decompress(compress(x))] = x``) and their error
per element is below the chunk's scale (``max|x|/127`` for int8, ``max|x|/7`` for int4). ``sign``
is biased; it relies on error feedback, which the optimizers provide: CHOCO's public copies keep
what was not sent in ``x − x̂``, and Local SGD keeps a residual. The ``seed`` both ends pass makes
``randk``'s indices (and the quantizers' rounding) reproducible; random numbers come from a
private generator, so the user's global RNG stream is untouched. Tensors may live on any device;
the payload lives on the same one.
"""

from __future__ import annotations

import math

import torch

from asyncddp.errors import OptimizerError

__all__ = ["Compressor", "parse_compressor", "COMPRESSOR_SPECS", "CHUNK"]

CHUNK = 1024  # elements sharing one scale in int8/int4/sign
COMPRESSOR_SPECS = ("identity", "topk:F", "randk:F", "int8", "int4", "sign")
_INDEX = torch.int32


def _as(payload: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A byte slice viewed as ``dtype`` (copied first when its offset is not aligned for it)."""
    if payload.storage_offset() % dtype.itemsize:
        payload = payload.clone()
    return payload.view(dtype)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


class Compressor:
    """Base: the identity (every value sent as it is)."""

    spec = "identity"

    def nbytes(self, numel: int, dtype: torch.dtype) -> int:
        """Payload bytes for ``numel`` elements of ``dtype``."""
        return numel * dtype.itemsize

    def compress(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """``x`` (1-D) packed into a ``uint8`` payload of ``nbytes(x.numel(), x.dtype)`` bytes."""
        return x.detach().contiguous().view(torch.uint8).clone()

    def decompress(self, payload: torch.Tensor, numel: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
        """The dense tensor ``payload`` stands for."""
        return _as(payload, dtype)[:numel].clone()

    def __repr__(self) -> str:
        return f"Compressor({self.spec!r})"


def _count(fraction: float, numel: int) -> int:
    return min(numel, max(1, round(fraction * numel)))


_SAMPLE = 65536  # magnitudes sampled to guess top-k's threshold


def _top_index(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest magnitudes. A full ``topk`` over millions of entries is slow;
    a threshold guessed from an evenly strided sample (twice the share asked for) leaves a few
    times ``k`` candidates, and ``topk`` among those is exact whenever at least ``k`` pass (every
    one of the ``k`` largest is then at or above the threshold); otherwise the full ``topk``."""
    n = magnitude.numel()
    if n < 4 * _SAMPLE or k * 8 > n:
        return magnitude.topk(k, sorted=False).indices
    sample = magnitude[:: n // _SAMPLE]
    keep = min(sample.numel(), max(1, 2 * k * sample.numel() // n))
    threshold = sample.topk(keep, sorted=False).values.min()
    candidates = (magnitude >= threshold).nonzero().view(-1)
    if candidates.numel() < k:
        return magnitude.topk(k, sorted=False).indices
    return candidates[magnitude[candidates].topk(k, sorted=False).indices]


class TopK(Compressor):
    def __init__(self, fraction: float, spec: str) -> None:
        self.fraction, self.spec = fraction, spec

    def nbytes(self, numel, dtype):
        return _count(self.fraction, numel) * (_INDEX.itemsize + dtype.itemsize)

    def compress(self, x, seed=0):
        index = _top_index(x.detach().abs(), _count(self.fraction, x.numel()))
        values = x.detach()[index]
        return torch.cat([index.to(_INDEX).view(torch.uint8), values.contiguous().view(torch.uint8)])

    def decompress(self, payload, numel, dtype, seed=0):
        k = _count(self.fraction, numel)
        split = k * _INDEX.itemsize
        out = torch.zeros(numel, dtype=dtype, device=payload.device)
        out[_as(payload[:split], _INDEX).long()] = _as(payload[split:], dtype)
        return out


class RandK(Compressor):
    def __init__(self, fraction: float, spec: str) -> None:
        self.fraction, self.spec = fraction, spec

    def _index(self, numel: int, seed: int, device) -> torch.Tensor:
        """One index drawn in each of ``k`` equal strata of ``0..numel-1``: ``k`` distinct
        indices, each entry kept with probability about ``k/numel``, at the cost of ``k`` random
        numbers (a permutation of all ``numel`` costs far more). Drawn on the CPU from the shared
        seed, so ranks on different devices draw the same ones."""
        k = _count(self.fraction, numel)
        starts = torch.arange(k + 1, dtype=torch.float64).mul_(numel / k).floor_().long()
        starts[-1] = numel
        widths = (starts[1:] - starts[:-1]).double()
        draw = torch.rand(k, generator=_generator(torch.device("cpu"), seed), dtype=torch.float64)
        return (starts[:-1] + (draw * widths).long()).to(device)

    def nbytes(self, numel, dtype):
        return _count(self.fraction, numel) * dtype.itemsize

    def compress(self, x, seed=0):
        return x.detach()[self._index(x.numel(), seed, x.device)].contiguous().view(torch.uint8)

    def decompress(self, payload, numel, dtype, seed=0):
        out = torch.zeros(numel, dtype=dtype, device=payload.device)
        out[self._index(numel, seed, payload.device)] = _as(payload, dtype)
        return out


def _chunks(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, zero-padded to whole chunks, as a (chunks, CHUNK) matrix (read only:
    ``x`` itself when no copy is needed)."""
    n = x.numel()
    if x.dtype == torch.float32 and n % CHUNK == 0:
        return x.detach().reshape(-1, CHUNK)
    work = torch.zeros(n + (-n % CHUNK), dtype=torch.float32, device=x.device)
    work[:n].copy_(x.detach().reshape(-1))
    return work.view(-1, CHUNK)


def _num_chunks(numel: int) -> int:
    return math.ceil(numel / CHUNK)


class Quantize(Compressor):
    """Per-chunk scale ``max|x|/levels``, stochastic rounding to integers in ``[-levels, levels]``."""

    def __init__(self, bits: int) -> None:
        self.bits, self.levels, self.spec = bits, 2 ** (bits - 1) - 1, f"int{bits}"

    def nbytes(self, numel, dtype):
        return 4 * _num_chunks(numel) + math.ceil(numel * self.bits / 8)

    def compress(self, x, seed=0):
        n = x.numel()
        chunks = _chunks(x)
        low, high = torch.aminmax(chunks, dim=1)
        scale = torch.maximum(-low, high).div_(self.levels)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        # floor(x/scale + u), u uniform in [0, 1): each value rounds up with the probability of
        # its fractional part. The noise buffer becomes the result (one pass each).
        q = torch.rand(chunks.shape, generator=_generator(x.device, seed), device=x.device)
        q.addcdiv_(chunks, safe[:, None]).floor_().clamp_(-self.levels, self.levels)
        q = q.view(-1)[:n].to(torch.int8)
        if self.bits == 4:  # two per byte: low nibble first
            q = (q + 8).to(torch.uint8)
            if n % 2:
                q = torch.cat([q, q.new_full((1,), 8)])
            q = q[0::2] | (q[1::2] << 4)
        return torch.cat([scale.view(torch.uint8), q.view(torch.uint8)])

    def decompress(self, payload, numel, dtype, seed=0):
        m = _num_chunks(numel)
        scale = _as(payload[:4 * m], torch.float32)
        body = payload[4 * m:]
        if self.bits == 4:
            q = torch.stack([body & 15, body >> 4], dim=1).view(-1)[:numel].to(torch.float32) - 8
        else:
            q = body.view(torch.int8).to(torch.float32)
        pad = -numel % CHUNK
        if pad:
            q = torch.cat([q, q.new_zeros(pad)])
        return (q.view(m, CHUNK) * scale[:, None]).view(-1)[:numel].to(dtype)


_BIT_WEIGHTS = [1, 2, 4, 8, 16, 32, 64, 128]


class Sign(Compressor):
    """Per-chunk mean magnitude, then one bit per element (set: non-negative)."""

    spec = "sign"

    def nbytes(self, numel, dtype):
        return 4 * _num_chunks(numel) + math.ceil(numel / 8)

    def compress(self, x, seed=0):
        n = x.numel()
        chunks = _chunks(x)
        counts = torch.full((chunks.shape[0],), float(CHUNK), device=x.device)
        counts[-1] = n - CHUNK * (chunks.shape[0] - 1)  # the last chunk's padding is not data
        scale = chunks.abs().sum(dim=1) / counts
        bits = (x.detach().view(-1) >= 0).to(torch.uint8)
        pad = -n % 8
        if pad:
            bits = torch.cat([bits, bits.new_zeros(pad)])
        weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=x.device)
        packed = (bits.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)
        return torch.cat([scale.view(torch.uint8), packed])

    def decompress(self, payload, numel, dtype, seed=0):
        m = _num_chunks(numel)
        scale = _as(payload[:4 * m], torch.float32)
        weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=payload.device)
        bits = ((payload[4 * m:, None] & weights) > 0).view(-1)[:numel]
        signs = bits.to(torch.float32) * 2 - 1
        pad = -numel % CHUNK
        if pad:
            signs = torch.cat([signs, signs.new_zeros(pad)])
        return (signs.view(m, CHUNK) * scale[:, None]).view(-1)[:numel].to(dtype)


def _fraction(spec: str, text: str, option: str) -> float:
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction <= 1:  # nan fails too
        raise OptimizerError(
            f"{option}={spec!r}: the fraction after ':' must be a number in (0, 1], e.g. "
            f"{spec.split(':')[0]}:0.01 for 1% of the entries"
        )
    return fraction


def parse_compressor(spec, option: str = "compressor") -> Compressor:
    """The compressor named by ``spec`` (a ``Compressor`` passes through); ``OptimizerError``
    naming ``option`` for anything else."""
    if isinstance(spec, Compressor):
        return spec
    if not isinstance(spec, str):
        raise OptimizerError(f"{option}={spec!r} is not a compressor spec; use one of "
                             f"{', '.join(COMPRESSOR_SPECS)}")
    text = spec.strip().lower()
    kind, _, arg = text.partition(":")
    if kind in ("topk", "randk") and arg:
        fraction = _fraction(spec, arg, option)
        return (TopK if kind == "topk" else RandK)(fraction, f"{kind}:{arg}")
    if not arg and kind in ("identity", "int8", "int4", "sign"):
        return {"identity": Compressor, "int8": lambda: Quantize(8), "int4": lambda: Quantize(4),
                "sign": Sign}[kind]()
    raise OptimizerError(f"{option}={spec!r} is not a compressor spec; use one of "
                         f"{', '.join(COMPRESSOR_SPECS)} (F a fraction in (0, 1], e.g. topk:0.01)")
