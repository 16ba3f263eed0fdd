"""The communication core: process bootstrap, neighbour averaging, collectives and windows.

Every public name loads lazily from the module that defines it, as listed in the one table of
public names (``asyncddp.EXPORTS``): the ops import torch, and the launcher side of the package
must be able to import ``asyncddp.comm.env`` or ``asyncddp.comm.timeline`` without it.
"""

from __future__ import annotations

import importlib

from asyncddp import EXPORTS

# The table's rows defined in this package, and ``get_context`` for the runtime's own packages
# (optimizers, BlueFog compatibility); it is not a top-level name.
_NAMES = {name: module for name, module in EXPORTS.items() if module.startswith(__name__ + ".")}
_NAMES["get_context"] = "asyncddp.comm.context"

__all__ = list(_NAMES)


def __getattr__(name: str):
    module_name = _NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'asyncddp.comm' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
