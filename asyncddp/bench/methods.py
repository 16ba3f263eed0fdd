"""The training methods every model bench runs (``bench MODEL``, ``--kill-rank``, ``bench converge``).

One registry: a method is one ``Method`` entry of ``METHODS``, in table order. ``wrap`` turns a
plain torch optimizer and its model into the method's distributed optimizer (imports happen
inside it, so this module stays cheap for the parent process); ``local`` and ``ddp`` have none
(no communication; torch DistributedDataParallel, set up by the ranks themselves). ``survives``
is what the method promises about the survivors' parameters after a lost rank (a short label and
a sentence), or None and ``cannot_survive`` saying why it cannot go on without a rank. Adding a
method is adding one entry here: the model bench, its ``--kill-rank`` variant and ``bench
converge`` pick it up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["Method", "METHODS", "METHOD_NAMES", "get_method"]


@dataclass(frozen=True)
class Method:
    name: str
    wrap: Callable | None  # (optimizer, model) -> distributed optimizer; None for local and ddp
    survives: tuple[str, str] | None = None  # (table label, sentence) after a lost rank
    cannot_survive: str = ""  # why not, when ``survives`` is None


def _optim(name: str, **options) -> Callable:
    """A ``wrap`` building ``asyncddp.optim.<name>(optimizer, model, **options)``; a ``schedule``
    option given as a name is taken from ``asyncddp.topology.schedules``."""
    def wrap(optimizer, model):
        import asyncddp.optim as optim

        kwargs = dict(options)
        if isinstance(kwargs.get("schedule"), str):
            from asyncddp.topology import schedules

            kwargs["schedule"] = getattr(schedules, kwargs["schedule"])
        return getattr(optim, name)(optimizer, model, **kwargs)

    return wrap


_ENTRIES = (
    Method("local", None, cannot_survive="no communication, so there is no job-wide loss to survive"),
    Method("ddp", None, cannot_survive="torch DDP's process group (gloo or NCCL) cannot go on without a rank"),
    Method("allreduce", _optim("DistributedGradientAllreduceOptimizer"),
           ("identical", "gradients averaged every step, parameters averaged once over the survivors after the "
                         "loss: replicas identical up to rounding")),
    Method("dear", _optim("DistributedDeAROptimizer"),
           ("identical", "reduce-scatter + all-gather every step, parameters averaged once over the survivors "
                         "after the loss: replicas identical up to rounding")),
    Method("neighbor-exp2", _optim("DistributedNeighborAllreduceOptimizer"),
           ("close", "neighbour averaging on Exp-2, rebuilt for the survivors: replicas mix every step and stay "
                     "close, never exactly equal")),
    Method("neighbor-one-peer", _optim("DistributedNeighborAllreduceOptimizer", schedule="one_peer_exponential_two"),
           ("close", "one peer per step on a one-peer Exp-2 schedule restarted for the survivors: replicas stay "
                     "close, never exactly equal")),
    Method("hierarchical", _optim("DistributedHierarchicalNeighborAllreduceOptimizer"),
           ("close", "machine-wide average, then neighbour averaging between machines: equal within a machine, "
                     "close across machines")),
    Method("win-put", _optim("DistributedWinPutOptimizer"),
           ("close (async)", "asynchronous puts into neighbours' windows, re-created for the survivors: replicas "
                             "stay close, never exactly equal")),
)
METHODS: dict[str, Method] = {method.name: method for method in _ENTRIES}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; ``BenchError`` naming the known ones otherwise."""
    method = METHODS.get(name)
    if method is None:
        from asyncddp.bench.results import BenchError

        raise BenchError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    return method
