"""Showing arguments that are not valid UTF-8 (a file name in another encoding) faithfully.

Python hands such bytes to us as lone surrogates (U+DC80..U+DCFF, "surrogateescape"). Printed as
they are, JSON shows ``\\udcff``, which is not a character, and strict JSON readers refuse it.
So ``--dry-run`` shows the command line in the form a shell reproduces byte for byte: an argument
holding such bytes (or control characters) is written ``$'...'`` with ``\\xNN`` escapes, which bash,
zsh and ksh read back exactly; every other argument is quoted as ``shlex`` does. In JSON, string
values keep their text with each such byte replaced by U+FFFD, and ``command_line`` is the exact form.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

__all__ = ["shell_quote", "shell_join", "json_safe"]

_UNSAFE = re.compile(r"[\udc80-\udcff\x00-\x1f\x7f]")


def shell_quote(arg: str) -> str:
    """``arg`` quoted for a POSIX shell; ``$'...'`` when it holds undecodable bytes or control characters."""
    if not _UNSAFE.search(arg):
        return shlex.quote(arg)
    out = []
    for char in arg:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif char in "\\'":
            out.append("\\" + char)
        else:
            out.append(char)
    return "$'" + "".join(out) + "'"


def shell_join(args) -> str:
    return " ".join(shell_quote(arg) for arg in args)


def json_safe(value: Any) -> Any:
    """``value`` with every undecodable byte in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return re.sub(r"[\udc80-\udcff]", "\ufffd", value)
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
