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

from asyncddp.bench.errors import BenchError

__all__ = ["Method", "METHODS", "METHOD_NAMES", "get_method", "DEFAULT_SYNC_EVERY"]


@dataclass(frozen=True)
class Method:
    name: str
    wrap: Callable | None  # (optimizer, model, sync_every) -> distributed optimizer; None for local and ddp
    survives: tuple[str, str] | None = None  # (table label, sentence) after a lost rank
    cannot_survive: str = ""  # why not, when ``survives`` is None


DEFAULT_SYNC_EVERY = 32  # local steps per outer step of local-sgd and the diloco methods (--sync-every)


def _optim(name: str, outer: bool = False, **options) -> Callable:
    """A ``wrap`` building ``asyncddp.optim.<name>(optimizer, model, **options)``; a ``schedule``
    option given as a name is taken from ``asyncddp.topology.schedules``. ``outer``: the method
    takes local steps, ``sync_every`` of them per outer step (``--sync-every``)."""
    def wrap(optimizer, model, sync_every: int = DEFAULT_SYNC_EVERY):
        import asyncddp.optim as optim

        kwargs = dict(options, sync_every=sync_every) if outer else dict(options)
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
    # Communication-efficient: compressed gossip (CHOCO-SGD) and local steps with an outer step.
    # choco-topk: γ = 0.1, not the library's 0.02 (set for Gaussian differences, the worst case):
    # a training run's x − x̂ is heavy-tailed, top-1% carries most of it, and on digits (4 ranks)
    # γ = 0.02 / 0.05 / 0.1 / 0.25 / 0.5 ended at 0.962 / 0.964 / 0.967 / 0.953 / diverged.
    Method("choco-topk", _optim("DistributedCompressedNeighborOptimizer", compressor="topk:0.01",
                                consensus_lr=0.1),
           ("close", "compressed gossip (top-1%) on Exp-2; public copies start again from one dense send per "
                     "edge of the survivors' topology: replicas approach each other, never exactly equal")),
    Method("choco-int8", _optim("DistributedCompressedNeighborOptimizer", compressor="int8"),
           ("close", "compressed gossip (int8) on Exp-2; public copies start again from one dense send per edge "
                     "of the survivors' topology: replicas stay close, never exactly equal")),
    Method("local-sgd", _optim("DistributedLocalSGDOptimizer", outer=True, communication="allreduce"),
           ("equal at outer steps", "local steps, then the survivors' average every --sync-every steps: "
                                    "replicas equal right after each outer step, apart between them")),
    # diloco-gossip: two int8 one-peer rounds per outer step (exact-average pattern on 4 ranks,
    # half the bytes of one dense round); one dense round left the replicas apart (0.958 vs 0.975).
    Method("diloco-gossip", _optim("DistributedLocalSGDOptimizer", outer=True, communication="one-peer",
                                   outer_lr=0.7, outer_momentum=0.9, nesterov=True, gossip_rounds=2,
                                   compressor="int8"),
           ("apart", "local steps, then an outer step on two int8 one-peer gossip rounds every --sync-every "
                     "steps on a schedule restarted for the survivors: replicas mix, never exactly equal")),
    Method("diloco-allreduce", _optim("DistributedLocalSGDOptimizer", outer=True, communication="allreduce",
                                      outer_lr=0.7, outer_momentum=0.9, nesterov=True),
           ("close", "local steps, then DiLoCo's outer step on the survivors' average; outer states that parted "
                     "at the loss come back together geometrically")),
)
METHODS: dict[str, Method] = {method.name: method for method in _ENTRIES}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; ``BenchError`` naming the known ones otherwise."""
    method = METHODS.get(name)
    if method is None:
        raise BenchError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    return method
