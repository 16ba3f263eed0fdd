"""Reading a file the user named on the command line, with one error path for every such file.

Hostfiles and cluster configs are both user input: a missing, unreadable or absurdly large file
(a log given by mistake) must become one line naming the file and the flag, never a traceback, a
hang or gigabytes of memory, so both read through here, at most ``max_bytes``. Only a regular file
is read: a FIFO blocks ``open()`` until a writer comes (maybe never), a device such as
``/dev/zero`` never ends, a socket cannot be opened. The file is opened without blocking and
checked on the open descriptor, so nothing named here can hang the reader, even if the path is
swapped between a check and the open.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["read_input_file", "MAX_INPUT_BYTES", "file_kind"]

MAX_INPUT_BYTES = 16 << 20  # a hostfile of 10^5 hosts is 2 MB


def file_kind(mode: int) -> str:
    """What a non-regular file is, in the words of an error message."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_input_file(path: Path, what: str, flag: str, kind: str, error: type[Exception],
                    max_bytes: int = MAX_INPUT_BYTES) -> str:
    """The text of a file the user named with ``flag``; ``error`` naming it when missing, not a
    regular file, unreadable, not UTF-8 or over ``max_bytes``."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):  # open() of a socket fails with a puzzling ENXIO
            raise error(f"{what} {path} is a socket, not a file; give a {kind} with {flag}")
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(descriptor, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise error(f"{what} {path} is {file_kind(mode)}, not a file; give a {kind} with {flag}")
            data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise error(f"{what} {path} is larger than {max_bytes >> 20} MiB, more than any {kind} needs; "
                        f"check the {flag} path")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the {flag} path") from None
    except IsADirectoryError:  # not raised by os.open(O_RDONLY) on Linux, but on other systems
        raise error(f"{what} {path} is a directory, not a file; give a {kind} with {flag}") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{what} {path} cannot be read ({problem}); give a readable {kind}") from None
