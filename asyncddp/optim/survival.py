"""How the distributed optimizers carry on when ranks are lost (fault-tolerant jobs).

The communication core turns a lost rank into one ``RankLostError`` on every survivor, raised
by whatever op met it; survivors can meet it one step apart (a rank whose neighbours all lived
finishes its step and meets the loss in the next). Each optimizer catches it inside ``step()``
(or its hooks) and calls ``agree_after_loss``: the survivors agree on the latest step any of
them reached; a rank that was behind drops its unfinished round (its local update stands) and
the others redo theirs on the new world, so the next communication matches everywhere.
Optimizers that keep identical replicas (gradient averaging, DeAR) also average the parameters
once, which makes the replicas identical again whatever each survivor had applied.
"""

from __future__ import annotations

from asyncddp.comm import recovery
from asyncddp.comm.collectives import agree_on_step
from asyncddp.errors import RankLostError

__all__ = ["fault_tolerant", "agree_after_loss", "restore"]


def fault_tolerant() -> bool:
    return recovery.enabled()


def agree_after_loss(step: int, params=None) -> int:
    """The step every survivor resumes at (see the module docstring); with ``params``, also
    average them over the survivors. Collective; retries if yet another rank is lost."""
    from asyncddp.optim.parameters import allreduce_parameters

    while True:
        try:
            agreed = agree_on_step(step)
            if params is not None:
                allreduce_parameters(params)
            return agreed
        except RankLostError:
            continue


def restore(backup) -> None:
    """Put back tensors saved before a round whose in-place ops may have left partial results
    (``backup``: ``[(tensor, saved copy)]``, or None)."""
    for tensor, saved in backup or ():
        tensor.copy_(saved)
