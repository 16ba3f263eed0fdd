"""The communication core: process bootstrap, neighbour averaging, collectives and windows."""

from asyncddp.comm.context import *  # noqa: F401,F403
from asyncddp.comm.context import __all__ as _context_all

__all__ = list(_context_all)

# --- ops (neighbour averaging, collectives, handles): loaded lazily because they import torch ---
_OP_MODULES = {
    "asyncddp.comm.handles": ("synchronize", "wait", "poll"),
    "asyncddp.comm.neighbor": (
        "neighbor_allreduce", "neighbor_allreduce_", "neighbor_allreduce_nonblocking",
        "neighbor_allreduce_nonblocking_",
    ),
    "asyncddp.comm.neighbor_gather": ("neighbor_allgather", "neighbor_allgather_nonblocking"),
    "asyncddp.comm.hierarchical": (
        "hierarchical_neighbor_allreduce", "hierarchical_neighbor_allreduce_",
        "hierarchical_neighbor_allreduce_nonblocking", "hierarchical_neighbor_allreduce_nonblocking_",
    ),
    "asyncddp.comm.collectives": (
        "allreduce", "allreduce_", "allreduce_nonblocking", "allreduce_nonblocking_",
        "broadcast", "broadcast_", "broadcast_nonblocking", "broadcast_nonblocking_",
        "allgather", "allgather_nonblocking", "reduce_scatter", "reduce_scatter_nonblocking",
        "barrier", "barrier_nonblocking",
    ),
    "asyncddp.comm.engine": ("comm_stats",),
    "asyncddp.comm.device": ("mpi_is_cuda_aware",),
    "asyncddp.comm.windows": (
        "win_create", "win_free", "win_put", "win_put_nonblocking", "win_get",
        "win_get_nonblocking", "win_accumulate", "win_accumulate_nonblocking", "win_update",
        "win_update_then_collect", "get_win_version", "win_mutex", "win_wait", "win_poll",
        "win_associated_p", "turn_on_win_ops_with_associated_p",
        "turn_off_win_ops_with_associated_p", "win_memory",
    ),
}
_OP_EXPORTS = {name: module for module, names in _OP_MODULES.items() for name in names}
__all__ += list(_OP_EXPORTS)


def __getattr__(name: str):
    module_name = _OP_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'asyncddp.comm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
