"""The communication core: process bootstrap, neighbour averaging, collectives and windows."""

from asyncddp.comm.context import *  # noqa: F401,F403
from asyncddp.comm.context import __all__ as _context_all

__all__ = list(_context_all)
