"""Where one run's logs go: a folder of its own under ``--output-dir``, new for every run.

Reusing an output directory must neither truncate an earlier run's logs nor leave them beside the
new ones, where an earlier run's ``rank.7.log`` next to this run's four logs reads as one job of
eight ranks. So every run writes into a new folder named by its start time, ``DIR/run-YYYYmmdd-HHMMSS``
(``-2``, ``-3``... for runs started in the same second), made with one ``mkdir`` so that two runs
starting together never share it, and ``DIR/latest`` points at the newest one for ``tail -f``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from asyncddp.errors import ConfigError

__all__ = ["LATEST", "new_log_dir"]

LATEST = "latest"
_MAX_SAME_SECOND = 1000


def _cannot(output_dir: str, error: OSError) -> ConfigError:
    where = f" ({error.filename})" if error.filename and str(error.filename) != output_dir else ""
    return ConfigError(f"--output-dir {output_dir}: cannot create a folder there: {error.strerror}{where}; "
                       "give a directory you can write to")


def new_log_dir(output_dir: str, now: float | None = None) -> str:
    """Create ``output_dir`` if needed and a new folder in it for this run's logs; its path."""
    base = Path(output_dir)
    if base.exists() and not base.is_dir():
        raise ConfigError(f"--output-dir {output_dir}: that is a file, not a directory; give a directory "
                          "(it is created if missing)")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot(output_dir, error) from None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    for attempt in range(1, _MAX_SAME_SECOND):
        folder = base / (f"run-{stamp}" if attempt == 1 else f"run-{stamp}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise _cannot(output_dir, error) from None
        _point_latest(base, folder.name)
        return str(folder)
    raise ConfigError(f"--output-dir {output_dir}: {_MAX_SAME_SECOND} runs started this second; try again")


def _point_latest(base: Path, name: str) -> None:
    """Make ``base/latest`` a link to ``name``, atomically; a ``latest`` of the user's own is left alone."""
    link = base / LATEST
    if link.exists() and not link.is_symlink():
        return
    temporary = base / f".{LATEST}.{os.getpid()}"
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(name)
        os.replace(temporary, link)
    except OSError:  # a file system without symlinks: the folder itself is what the run names
        with contextlib.suppress(OSError):
            temporary.unlink()
