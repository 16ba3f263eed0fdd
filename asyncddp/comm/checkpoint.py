"""Checkpoints for whole-job restarts: ``save_checkpoint`` / ``load_checkpoint``.

``asyncddp run --max-restarts K`` relaunches a failed job from the start; a script that saves its
model, optimizer and step every so often resumes where it stopped::

    step = addp.load_checkpoint("ckpt.pt", model, optimizer)   # 0 when there is none yet
    while step < steps:
        ...
        step += 1
        if step % 100 == 0:
            addp.save_checkpoint("ckpt.pt", model, optimizer, step)

Rank 0 alone writes (the ranks hold the same averaged model, or close to it), to a temporary file
``.NAME.PID.tmp`` in the same folder that is synced and then renamed over the old one: a job killed
mid-write leaves the previous checkpoint whole, and the next save removes the temporary files of
writers that no longer run. Every rank loads the same file, so a checkpoint loads on any number of
ranks; with several hosts the path must be on a filesystem they share. Every failure, to write
(full disk, read-only folder) or to read (truncated file, foreign content, another model), is a
``CheckpointError`` naming the file and the cause, and a failed save leaves no file behind.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asyncddp.errors import AsyncDDPError

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

_RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_MAX_PID = 1 << 22  # Linux's highest possible pid_max
_LAYOUT = "what save_checkpoint writes (a dict of model, optimizer and step)"


class CheckpointError(AsyncDDPError):
    """A checkpoint file cannot be written or read, or does not fit the model."""


def _rank() -> int:
    """This process's rank: asyncddp's world when initialised, else the launcher's variables."""
    from asyncddp.comm import context

    if context.is_initialized():
        return context.rank()
    for name in _RANK_ENV:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _one_line(error: BaseException, limit: int = 300) -> str:
    """``error``'s message on one line (torch's span several), at most ``limit`` characters."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _WriteErrors:
    """A file for ``torch.save`` that keeps the ``OSError`` a write raised: torch reports a failed
    write (a full disk) as its own ``RuntimeError: [enforce fail at inline_container.cc...]``."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def _writer_is_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (the writer of a temporary file crashed)."""
    if not 0 < pid < _MAX_PID or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it runs, as another user
        return False
    return False


def _remove_stale_temporaries(target: Path) -> None:
    """Remove the temporary files of ``target`` whose writer no longer runs (a crash mid-write)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.tmp")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:  # no folder yet, or none readable: the write itself says what is wrong
        return
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found and _writer_is_gone(int(found.group(1))):
            try:
                os.unlink(entry.path)
            except OSError:
                pass  # a read-only folder: the write fails next, with that reason


def _not_a_folder(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists but is not a folder, if any."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _write(state: dict, target: Path, temporary: Path) -> None:
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(temporary, "wb") as handle:
        sink = _WriteErrors(handle)
        try:
            torch.save(state, sink)
        except Exception:
            if sink.error is not None:
                raise sink.error from None
            raise
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash of the host
    finally:
        os.close(directory)


def _remove_temporary(temporary: Path) -> str:
    """Remove this save's temporary file; what to add to the error when that fails (it never
    replaces the write's own error)."""
    try:
        if os.path.lexists(temporary):  # a read-only folder fails even to unlink a missing file
            os.unlink(temporary)
    except OSError as error:
        return f" (and its temporary file {temporary} could not be removed: {error.strerror or error})"
    return ""


def _cause(error: Exception) -> str:
    """Why a write failed, and what to do about it."""
    if isinstance(error, OSError):
        reason = error.strerror or _one_line(error)
        if error.errno in _NO_SPACE:
            return f"{reason}; free some space or give a path on another filesystem"
        return f"{reason}; give a path in a folder you can write"
    return f"cannot serialise the state ({type(error).__name__}: {_one_line(error)})"


def save_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None, step: int = 0) -> bool:
    """Write ``model``'s and ``optimizer``'s state and ``step`` to ``path`` on rank 0 (atomically);
    True on the rank that wrote it, False on the others. ``CheckpointError`` when it cannot be
    written, with nothing left behind."""
    if _rank() != 0:
        return False
    target = Path(path)
    blocker = _not_a_folder(target.parent)
    if blocker is not None:
        raise CheckpointError(f"cannot write checkpoint {path}: {blocker} is a file, not a folder; "
                              "give a path in a folder you can write")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "step": int(step)}
    _remove_stale_temporaries(target)
    temporary = _temporary(target)
    try:
        _write(state, target, temporary)
    except Exception as error:
        left = _remove_temporary(temporary)
        raise CheckpointError(f"cannot write checkpoint {path}: {_cause(error)}{left}") from (
            None if isinstance(error, OSError) else error)
    return True


def _read(path: str | os.PathLike) -> Any:
    import torch

    if not Path(path).is_file():
        raise CheckpointError(f"cannot load checkpoint {path}: not a regular file; give the file save_checkpoint "
                              "wrote")
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise CheckpointError(f"cannot load checkpoint {path}: {error.strerror or _one_line(error)}") from None
    with handle:
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as error:  # torch's reader fails in many ways on a bad file; each means the same
            raise CheckpointError(f"cannot load checkpoint {path}: the file is truncated or not {_LAYOUT}: "
                                  f"{_one_line(error)}") from None


def _check_layout(state: Any, path: str | os.PathLike) -> None:
    if not isinstance(state, Mapping):
        found = f"a {type(state).__name__}"
    elif not isinstance(state.get("model"), Mapping):
        found = "a dict without a model state" if "model" not in state else "a model state that is not a dict"
    elif state.get("optimizer") is not None and not isinstance(state["optimizer"], Mapping):
        found = "an optimizer state that is not a dict"
    elif type(state.get("step")) is not int:
        found = f"step {state.get('step')!r}, not an integer"
    else:
        return
    raise CheckpointError(f"cannot load checkpoint {path}: it holds {found}, not {_LAYOUT}")


def load_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None) -> int:
    """Load ``path`` into ``model`` (and ``optimizer``) and return its step; 0, loading nothing,
    when ``path`` does not exist yet (the first launch of a job). ``CheckpointError`` when it
    cannot be read or does not fit."""
    if not os.path.lexists(path):
        return 0
    state = _read(path)
    _check_layout(state, path)
    parts = [("model", model)]
    if optimizer is not None and state.get("optimizer") is not None:
        parts.append(("optimizer", optimizer))
    for name, target in parts:
        try:
            target.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            raise CheckpointError(f"cannot load checkpoint {path}: it does not fit the {name}: "
                                  f"{_one_line(error)}") from None
    return state["step"]
