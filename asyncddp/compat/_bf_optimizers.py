"""BlueFog 0.3's optimizer names over ``asyncddp.optim`` (re-exported by ``asyncddp.compat.bluefog``).

Nothing here trains anything: each name forwards to the asyncddp factory that implements the same
update, passing every argument by keyword because the positional orders differ. BlueFog's
legacy wrappers take ``(optimizer, model, num_steps_per_communication)`` — their third positional
argument is the step count — whereas asyncddp's ``DistributedNeighborAllreduceOptimizer`` takes
``communication_type`` third. The mapping:

* ``DistributedAdaptWithCombineOptimizer(opt, model, communication_type, k)``: AWC, ``atc=False``
  (w+ = W w - lr g(w); communication overlaps backward);
* ``DistributedAdaptThenCombineOptimizer(opt, model, communication_type, k)``: ATC, ``atc=True``
  (w+ = W (w - lr g(w)));
* ``DistributedNeighborAllreduceOptimizer`` / ``...HierarchicalNeighborAllreduceOptimizer`` /
  ``DistributedAllreduceOptimizer``: AWC with that communication type (as in BlueFog, they warn
  ``PendingDeprecationWarning`` and point at the AWC name);
* ``DistributedGradientAllreduceOptimizer`` and ``DistributedWinPutOptimizer(..., window_prefix)``
  map one to one.

``model`` may be a module or a list of modules, as BlueFog allows. The returned optimizers carry
the settable attributes BlueFog documents (``self_weight``, ``src_weights``, ``dst_weights``,
``src_machine_weights``, ``dst_machine_weights``, ``enable_topo_check``, ``communication_type``,
``num_steps_per_communication``, and the win-put optimizer's ``force_barrier`` and ``max_lag``; the older
``send_neighbors``/``neighbor_weights`` pair too), read
at each communication round by asyncddp's implementation. Misuse raises ``BlueFogError`` (a
``ValueError``), as BlueFog does.
"""

from __future__ import annotations

import enum
import functools
import warnings

import torch

import asyncddp.optim as _optim
from asyncddp.compat._bf_common import BlueFogError, get_skip_negotiate_stage
from asyncddp.errors import AsyncDDPError

__all__ = [
    "CommunicationType", "DistributedAdaptWithCombineOptimizer",
    "DistributedAdaptThenCombineOptimizer", "DistributedNeighborAllreduceOptimizer",
    "DistributedHierarchicalNeighborAllreduceOptimizer", "DistributedAllreduceOptimizer",
    "DistributedGradientAllreduceOptimizer", "DistributedWinPutOptimizer",
    "broadcast_parameters", "allreduce_parameters", "broadcast_optimizer_state",
]  # fmt: skip


class CommunicationType(enum.Enum):
    """BlueFog's enum; asyncddp reads the member's name (``neighbor_allreduce`` ...)."""

    neighbor_allreduce = "neighbor.allreduce"
    hierarchical_neighbor_allreduce = "hierarchical.neighbor.allreduce"
    allreduce = "allreduce"
    empty = "empty"


def _bf_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AsyncDDPError as error:
            if isinstance(error, ValueError):
                raise
            raise BlueFogError(str(error)) from error

    return wrapper


def _module(model):
    """BlueFog accepts a module or a list of modules; asyncddp wants one module."""
    if isinstance(model, (list, tuple)) and all(isinstance(m, torch.nn.Module) for m in model):
        return torch.nn.ModuleList(model)
    return model


def _comm_type(communication_type):
    if isinstance(communication_type, CommunicationType):
        return communication_type.name
    if isinstance(communication_type, str):
        # BlueFog's enum values ("neighbor.allreduce") as well as our names.
        for member in CommunicationType:
            if communication_type == member.value:
                return member.name
    return communication_type  # asyncddp validates and names the allowed values


def _combine_optimizer(name: str, atc: bool, doc: str):
    """BlueFog's two neighbour-averaging optimizers differ only in when averaging happens."""

    def factory(optimizer, model, communication_type=CommunicationType.neighbor_allreduce,
                num_steps_per_communication=1):
        return _optim.DistributedNeighborAllreduceOptimizer(
            optimizer, _module(model), communication_type=_comm_type(communication_type),
            num_steps_per_communication=num_steps_per_communication, atc=atc,
        )  # fmt: skip

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return _bf_errors(factory)


DistributedAdaptWithCombineOptimizer = _combine_optimizer(
    "DistributedAdaptWithCombineOptimizer", False,
    "Adapt-with-combine: ``w+ = W w - lr * grad(w)``; communication overlaps backward.")
DistributedAdaptThenCombineOptimizer = _combine_optimizer(
    "DistributedAdaptThenCombineOptimizer", True,
    "Adapt-then-combine: ``w+ = W (w - lr * grad(w))``, for any torch optimizer.")


def _legacy(name: str, kind: CommunicationType):
    def factory(optimizer, model, num_steps_per_communication=1):
        warnings.warn(
            f"{name} is BlueFog's legacy name; use DistributedAdaptWithCombineOptimizer(opt, "
            f"model, bf.CommunicationType.{kind.name})",
            PendingDeprecationWarning,
            stacklevel=2,
        )
        return DistributedAdaptWithCombineOptimizer(
            optimizer, model, communication_type=kind,
            num_steps_per_communication=num_steps_per_communication,
        )  # fmt: skip

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"AWC with communication type {kind.name} (BlueFog's legacy name)."
    return factory


DistributedNeighborAllreduceOptimizer = _legacy(
    "DistributedNeighborAllreduceOptimizer", CommunicationType.neighbor_allreduce
)
DistributedHierarchicalNeighborAllreduceOptimizer = _legacy(
    "DistributedHierarchicalNeighborAllreduceOptimizer",
    CommunicationType.hierarchical_neighbor_allreduce,
)
DistributedAllreduceOptimizer = _legacy("DistributedAllreduceOptimizer", CommunicationType.allreduce)


@_bf_errors
def DistributedGradientAllreduceOptimizer(optimizer, model, num_steps_per_communication=1):
    """Horovod-style: ``step()`` applies the gradient averaged over all ranks."""
    return _optim.DistributedGradientAllreduceOptimizer(
        optimizer, _module(model), num_steps_per_communication=num_steps_per_communication
    )


@_bf_errors
def DistributedWinPutOptimizer(optimizer, model, num_steps_per_communication=1, window_prefix=None):
    """Asynchronous neighbour averaging through one-sided windows (``dst_weights`` settable).
    ``opt.unregister_window()`` (collective, after training) or ``bf.win_free()`` releases the
    windows.

    BlueFog's negotiation stage (on unless ``bf.set_skip_negotiate_stage(True)``) keeps every rank
    within one round of the others, and while ranks keep pace each round's averaging sees the
    in-neighbours' puts of that round. Ours waits for exactly that: a rank's averaging waits
    until its in-neighbours have made this round's put (``max_lag = 0``), so that an
    oversubscribed machine behaves as BlueFog's own does; with the stage skipped when the
    optimizer is built, ranks run fully apart (``max_lag = None``).
    """
    wrapped = _optim.DistributedWinPutOptimizer(
        optimizer, _module(model), num_steps_per_communication=num_steps_per_communication,
        window_prefix=window_prefix,
    )  # fmt: skip
    wrapped.max_lag = None if get_skip_negotiate_stage() else 0
    return wrapped


@_bf_errors
def broadcast_parameters(params, root_rank):
    """Overwrite ``params`` (a ``state_dict()``, ``named_parameters()`` or tensor list) with
    ``root_rank``'s values, in place."""
    _optim.broadcast_parameters(params, root_rank=root_rank)


@_bf_errors
def allreduce_parameters(params):
    """Average floating tensors of ``params`` over all ranks, in place."""
    _optim.allreduce_parameters(params)


@_bf_errors
def broadcast_optimizer_state(optimizer, root_rank):
    """Give every rank ``root_rank``'s optimizer state (torch 2.x state and ``None`` options kept)."""
    _optim.broadcast_optimizer_state(optimizer, root_rank=root_rank)
