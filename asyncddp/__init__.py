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
