"""BlueFog's ``bluefog.common.util`` helper that BlueFog programs and tests import:
``env(**variables)``, a context manager that sets environment variables for its block.

With the alias installed (``asyncddp.compat.install_bluefog_alias``) this module is
``bluefog.common.util``; ``with env(BLUEFOG_TIMELINE="./tl"): bf.init()`` is how BlueFog's
documentation turns its timeline on.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["env"]


@contextlib.contextmanager
def env(**variables):
    """Set each ``NAME=value`` (values that are None are left out) for the block, then restore
    what was there before: the old value, or no variable at all."""
    chosen = {name: value for name, value in variables.items() if value is not None}
    before = {name: os.environ.get(name) for name in chosen}
    os.environ.update(chosen)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
