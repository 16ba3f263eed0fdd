"""Reading a file the user named on the command line, with one error path for every such file.

Hostfiles and cluster configs are both user input: a missing or unreadable file must become one
line naming the file and the flag, never a traceback, so both read through here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_input_file"]


def read_input_file(path: Path, what: str, flag: str, kind: str, error: type[Exception]) -> str:
    """The text of a file the user named with ``flag``; ``error`` naming it when missing or unreadable."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the {flag} path") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{what} {path} cannot be read ({problem}); give a readable {kind}") from None
