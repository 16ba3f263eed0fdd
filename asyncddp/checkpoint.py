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
in the same folder that is synced and then renamed over the old one: a job killed mid-write leaves
the previous checkpoint whole. Every rank loads the same file, so a checkpoint loads on any number
of ranks; with several hosts the path must be on a filesystem they share.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from asyncddp.errors import AsyncDDPError

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]

_RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


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


def save_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None, step: int = 0) -> bool:
    """Write ``model``'s and ``optimizer``'s state and ``step`` to ``path`` on rank 0 (atomically);
    True on the rank that wrote it, False on the others."""
    import torch

    if _rank() != 0:
        return False
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "step": int(step)}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash of the host
        finally:
            os.close(directory)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {error.strerror or error}; "
                              "give a path in a folder you can write") from None
    return True


def load_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any = None) -> int:
    """Load ``path`` into ``model`` (and ``optimizer``) and return its step; 0, loading nothing,
    when ``path`` does not exist yet (the first launch of a job)."""
    import torch

    if not Path(path).exists():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first}") from None
