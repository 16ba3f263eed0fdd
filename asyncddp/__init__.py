"""asyncddp: decentralized and asynchronous data-parallel training for PyTorch.

``import asyncddp as addp`` is cheap: the communication core (which initialises MPI when used)
and the torch-dependent parts load on first attribute access, so the ``asyncddp`` command line
never starts MPI or imports torch unless a command needs it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it. Modules load on first access (PEP 562).
_EXPORTS: dict[str, str] = {
    **{
        name: "asyncddp.comm.context"
        for name in (
            "init",
            "shutdown",
            "is_initialized",
            "rank",
            "size",
            "local_rank",
            "local_size",
            "machine_rank",
            "machine_size",
            "is_homogeneous",
            "set_topology",
            "load_topology",
            "is_topology_weighted",
            "in_neighbor_ranks",
            "out_neighbor_ranks",
            "set_machine_topology",
            "load_machine_topology",
            "in_neighbor_machine_ranks",
            "out_neighbor_machine_ranks",
        )
    },
    **{
        name: "asyncddp.errors"
        for name in (
            "AsyncDDPError",
            "ConfigError",
            "HostfileError",
            "LaunchError",
            "NotInitializedError",
            "CommError",
            "TopologyError",
        )
    },
    "NeighborStep": "asyncddp.topology.schedules",
    **{name: "asyncddp.checkpoint" for name in ("save_checkpoint", "load_checkpoint", "CheckpointError")},
    **{name: "asyncddp.topology" for name in (
        "exponential_graph", "exponential_two_graph", "symmetric_exponential_graph", "ring_graph",
        "mesh_grid_2d_graph", "star_graph", "fully_connected_graph", "hypercube_graph",
        "equi_static_graph", "mixing_matrix", "consensus_rate", "is_doubly_stochastic", "is_regular",
        "in_neighbors", "out_neighbors", "degree_stats", "one_peer_exponential_two",
        "inner_outer_exponential_two", "ceca_schedule", "ceca_exact_average", "equi_dyn_schedule",
        "simulate_consensus", "topology_names", "get_topology",
    )},  # fmt: skip
    # --- communication ops (issue 4): neighbour averaging, collectives, handles ---
    **{
        name: module
        for module, names in {
            "asyncddp.comm.handles": ("synchronize", "wait", "poll"),
            "asyncddp.comm.neighbor": (
                "neighbor_allreduce", "neighbor_allreduce_", "neighbor_allreduce_nonblocking",
                "neighbor_allreduce_nonblocking_",
            ),
            "asyncddp.comm.neighbor_gather": (
                "neighbor_allgather", "neighbor_allgather_nonblocking",
            ),
            "asyncddp.comm.hierarchical": (
                "hierarchical_neighbor_allreduce", "hierarchical_neighbor_allreduce_",
                "hierarchical_neighbor_allreduce_nonblocking",
                "hierarchical_neighbor_allreduce_nonblocking_",
            ),
            "asyncddp.comm.collectives": (
                "allreduce", "allreduce_", "allreduce_nonblocking", "allreduce_nonblocking_",
                "broadcast", "broadcast_", "broadcast_nonblocking", "broadcast_nonblocking_",
                "allgather", "allgather_nonblocking", "reduce_scatter",
                "reduce_scatter_nonblocking", "barrier", "barrier_nonblocking",
            ),
            "asyncddp.comm.engine": ("comm_stats",),
            "asyncddp.comm.device": ("mpi_is_cuda_aware",),
        }.items()
        for name in names
    },  # fmt: skip
    # --- one-sided windows (issue 4): passive-target RMA, BlueFog's window API ---
    **{name: "asyncddp.comm.windows" for name in (
        "win_create", "win_free", "win_put", "win_put_nonblocking", "win_get",
        "win_get_nonblocking", "win_accumulate", "win_accumulate_nonblocking", "win_update",
        "win_update_then_collect", "get_win_version", "win_mutex", "win_wait", "win_poll",
        "win_associated_p", "turn_on_win_ops_with_associated_p",
        "turn_off_win_ops_with_associated_p", "win_memory",
    )},  # fmt: skip
    # --- distributed optimizers and replica agreement (issue 5) ---
    **{name: "asyncddp.optim" for name in (
        "DistributedNeighborAllreduceOptimizer", "DistributedHierarchicalNeighborAllreduceOptimizer",
        "DistributedAllreduceOptimizer", "DistributedGradientAllreduceOptimizer",
        "DistributedDeAROptimizer", "DistributedWinPutOptimizer", "broadcast_parameters",
        "allreduce_parameters", "broadcast_optimizer_state",
    )},  # fmt: skip
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'asyncddp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
