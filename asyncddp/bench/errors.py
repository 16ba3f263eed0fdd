"""The benchmarks' errors, in a leaf that the method registry, the results and the outcome all
import (``asyncddp.bench.results`` re-exports them)."""

from __future__ import annotations

from asyncddp.errors import AsyncDDPError

__all__ = ["BenchError", "BandwidthBelowBound"]


class BenchError(AsyncDDPError):
    """A benchmark could not run, or produced wrong values."""


class BandwidthBelowBound(BenchError):
    """The benchmark ran but its average bus bandwidth is below ``--min-busbw``."""

    exit_code = 1
