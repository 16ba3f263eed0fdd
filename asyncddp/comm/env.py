"""The ``ASYNCDDP_*`` environment variables the runtime reads, parsed one way.

A variable that is unset or blank means its default. A value that cannot be parsed raises
``ConfigError`` naming the variable, the value and what it should be: a typo in a job script
must stop the job on its first line, not quietly run with the default (a silently ignored
``ASYNCDDP_CHUNK_BYTES=4M`` would make a benchmark measure something else than it says).
Nothing here imports torch or MPI, so launch-side code may use it too.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from asyncddp.errors import ConfigError

__all__ = ["env_value", "env_int", "env_flag", "env_choice"]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_value(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    """``parse(value)`` of variable ``name``, ``default`` when unset or blank.

    ``parse`` raises ``ValueError`` for a value it refuses; that becomes a ``ConfigError``
    saying ``NAME='value' is not <expected>``.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return parse(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not {expected}; fix or unset it") from None


def env_int(name: str, default: int, *, minimum: int = 0, expected: str | None = None) -> int:
    """A whole number of at least ``minimum`` (K/M/G suffixes are not accepted: plain digits)."""

    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise ValueError(value)
        return number

    return env_value(name, default, parse, expected or f"an integer >= {minimum}")


def env_flag(name: str, default: bool | None) -> bool | None:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); ``default`` (may be None) when unset."""

    def parse(value: str) -> bool:
        lowered = value.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValueError(value)

    return env_value(name, default, parse, "a switch: give 1 or 0")


def env_choice(name: str, default: str, choices: tuple[str, ...], what: str) -> str:
    """One of ``choices`` (compared in lower case); ``what`` names the kind of value."""

    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(value)
        return value.lower()

    return env_value(name, default, parse, f"{what}: use one of " + ", ".join(repr(c) for c in choices))
