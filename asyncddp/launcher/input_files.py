"""Reading a file the user named on the command line, with one error path for every such file.

Hostfiles and cluster configs are both user input: a missing, unreadable or absurdly large file
(``/dev/zero``, a log given by mistake) must become one line naming the file and the flag, never a
traceback, a hang or gigabytes of memory, so both read through here, at most ``max_bytes``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_input_file", "MAX_INPUT_BYTES"]

MAX_INPUT_BYTES = 16 << 20  # a hostfile of 10^5 hosts is 2 MB


def read_input_file(path: Path, what: str, flag: str, kind: str, error: type[Exception],
                    max_bytes: int = MAX_INPUT_BYTES) -> str:
    """The text of a file the user named with ``flag``; ``error`` naming it when missing, unreadable,
    not UTF-8 or over ``max_bytes``."""
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise error(f"{what} {path} is larger than {max_bytes >> 20} MiB, more than any {kind} needs; "
                        f"check the {flag} path")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the {flag} path") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{what} {path} cannot be read ({problem}); give a readable {kind}") from None
