"""asyncddp: decentralized and asynchronous data-parallel training for PyTorch.

``import asyncddp as addp`` is cheap: the communication core (which initialises MPI when used)
and the torch-dependent parts load on first attribute access, so the ``asyncddp`` command line
never starts MPI or imports torch unless a command needs it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"


def _forms(op: str, in_place: bool = True) -> tuple[str, ...]:
    """An op's public forms: blocking, ``*_nonblocking``, and the in-place ``*_`` of each."""
    forms = (op, f"{op}_nonblocking")
    return (*forms, f"{op}_", f"{op}_nonblocking_") if in_place else forms


# The one table of public names: defining module -> names. Both lazy ``__getattr__``s read it
# (this package's, and ``asyncddp.comm``'s for the rows under it), and each module's ``__all__``
# is its row (``exported_by``); adding an op means adding it here and writing it in its module.
# Modules load on first access (PEP 562).
_TABLE: dict[str, tuple[str, ...]] = {
    "asyncddp.comm.context": (
        "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size",
        "machine_rank", "machine_size", "is_homogeneous", "set_topology", "load_topology",
        "is_topology_weighted", "in_neighbor_ranks", "out_neighbor_ranks", "set_machine_topology",
        "load_machine_topology", "in_neighbor_machine_ranks", "out_neighbor_machine_ranks",
    ),
    "asyncddp.errors": (
        "AsyncDDPError", "ConfigError", "HostfileError", "LaunchError", "NotInitializedError",
        "CommError", "RankLostError", "OptimizerError", "TopologyError",
    ),
    "asyncddp.comm.recovery": ("world_version", "on_world_change", "WorldChange"),
    "asyncddp.topology.schedules": ("NeighborStep",),
    "asyncddp.comm.checkpoint": ("save_checkpoint", "load_checkpoint", "CheckpointError"),
    "asyncddp.topology": (
        "exponential_graph", "exponential_two_graph", "symmetric_exponential_graph", "ring_graph",
        "mesh_grid_2d_graph", "star_graph", "fully_connected_graph", "hypercube_graph",
        "equi_static_graph", "mixing_matrix", "consensus_rate", "is_doubly_stochastic", "is_regular",
        "in_neighbors", "out_neighbors", "degree_stats", "one_peer_exponential_two",
        "inner_outer_exponential_two", "ceca_schedule", "ceca_exact_average", "equi_dyn_schedule",
        "simulate_consensus", "topology_names", "get_topology",
    ),
    # --- communication ops: neighbour averaging, collectives, handles ---
    "asyncddp.comm.handles": ("synchronize", "wait", "poll"),
    "asyncddp.comm.neighbor": _forms("neighbor_allreduce"),
    "asyncddp.comm.neighbor_gather": _forms("neighbor_allgather", in_place=False),
    "asyncddp.comm.hierarchical": _forms("hierarchical_neighbor_allreduce"),
    "asyncddp.comm.collectives": (
        *_forms("allreduce"), *_forms("broadcast"), *_forms("allgather", in_place=False),
        *_forms("reduce_scatter", in_place=False), *_forms("barrier", in_place=False), "agree_on_step",
    ),
    "asyncddp.comm.engine": ("comm_stats", "reset_comm_stats"),
    "asyncddp.comm.device": ("mpi_is_cuda_aware",),
    # --- one-sided windows: passive-target RMA, BlueFog's window API ---
    "asyncddp.comm.windows": (
        "win_create", "win_free", "win_put", "win_put_nonblocking", "win_get",
        "win_get_nonblocking", "win_accumulate", "win_accumulate_nonblocking", "win_update",
        "win_update_then_collect", "get_win_version", "win_mutex", "win_wait", "win_poll",
        "win_associated_p", "turn_on_win_ops_with_associated_p",
        "turn_off_win_ops_with_associated_p", "win_memory", "win_put_counts",
    ),
    # --- distributed optimizers and replica agreement ---
    "asyncddp.optim": (
        "DistributedNeighborAllreduceOptimizer", "DistributedHierarchicalNeighborAllreduceOptimizer",
        "DistributedAllreduceOptimizer", "DistributedGradientAllreduceOptimizer",
        "DistributedDeAROptimizer", "DistributedWinPutOptimizer", "DistributedCompressedNeighborOptimizer",
        "DistributedLocalSGDOptimizer", "broadcast_parameters",
        "allreduce_parameters", "broadcast_optimizer_state",
    ),
}  # fmt: skip

# Public name -> module that defines it.
EXPORTS: dict[str, str] = {name: module for module, names in _TABLE.items() for name in names}


def exported_by(module: str) -> list[str]:
    """The public names ``module`` defines (its row of the table)."""
    return list(_TABLE[module])


__all__ = ["__version__", *EXPORTS]


def __getattr__(name: str):
    module_name = EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'asyncddp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(EXPORTS))
