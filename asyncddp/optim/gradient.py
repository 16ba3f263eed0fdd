"""Horovod-style gradient averaging with wait-free backpropagation.

A post-accumulate-grad hook on every trainable parameter starts a nonblocking in-place
allreduce of ``p.grad`` the moment autograd has finished it, so the exchange of late layers'
gradients overlaps the backward pass of early layers; the communication thread fuses small
consecutive allreduces into one buffer (``ASYNCDDP_FUSION_THRESHOLD``). ``step()`` waits for
the averages and then runs the user's optimizer. Every rank must use the same parameters in
each backward pass (autograd then finishes them in the same order, so the calls match).
"""

from __future__ import annotations

from asyncddp.comm.collectives import allreduce_nonblocking_
from asyncddp.comm.context import size
from asyncddp.comm.handles import synchronize
from asyncddp.errors import AsyncDDPError
from asyncddp.optim.base import (
    DistributedOptimizer,
    check_model,
    check_optimizer,
    inner_step,
    named_trainable,
    wrap,
)

__all__ = ["DistributedGradientAllreduceOptimizer"]


class _GradientAllreduce(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, num_steps_per_communication: int) -> None:
        self._addp_named = named_trainable(model, self)
        self._addp_handles: dict = {}
        self._addp_hook_handles = []
        self.num_steps_per_communication = num_steps_per_communication
        self._addp_backward_count = 0
        if size() == 1:
            return  # averaging over one rank is the identity: no hooks, step() is the plain step
        for name, p in self._addp_named:
            self._addp_hook_handles.append(p.register_post_accumulate_grad_hook(self._addp_hook(name)))

    def _addp_hook(self, name):
        def hook(p):
            # Accumulating several backward passes: communicate only after the last one.
            if (self._addp_backward_count + 1) % self.num_steps_per_communication:
                return
            if id(p) in self._addp_handles:
                raise AsyncDDPError(
                    f"gradient of {name!r} finished twice before step(): call backward once per "
                    "step, or set num_steps_per_communication to the number of backward passes"
                )
            self._addp_handles[id(p)] = allreduce_nonblocking_(p.grad, average=True, name=f"grad.{name}")

        return hook

    def synchronize(self) -> None:
        """Wait for every gradient average started in this step (``step()`` calls this)."""
        if not self._addp_hook_handles:
            return  # one rank, or hooks removed: nothing was started
        if (self._addp_backward_count + 1) % self.num_steps_per_communication == 0:
            # Parameters that received no gradient in backward: same order on every rank.
            for name, p in self._addp_named:
                if id(p) not in self._addp_handles and p.grad is not None:
                    self._addp_handles[id(p)] = allreduce_nonblocking_(p.grad, name=f"grad.{name}")
        for handle in self._addp_handles.values():
            synchronize(handle)
        self._addp_handles.clear()

    def step(self, closure=None):
        self.synchronize()
        self._addp_backward_count += 1
        if self._addp_backward_count % self.num_steps_per_communication:
            return None  # accumulate locally; the update comes with the next communication
        return inner_step(self, closure)

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (the optimizer then steps without communicating)."""
        for handle in self._addp_hook_handles:
            handle.remove()
        self._addp_hook_handles = []


def DistributedGradientAllreduceOptimizer(optimizer, model, num_steps_per_communication: int = 1):
    """Wrap ``optimizer`` so that ``step()`` applies the gradient averaged over all ranks.

    Args:
        optimizer: a torch optimizer over ``model``'s parameters (stays an instance of its class).
        model: the module being trained; its parameters get gradient hooks.
        num_steps_per_communication: backward passes accumulated locally per averaged update
            (``step()`` after each; only every k-th communicates and updates).
    """
    who = "DistributedGradientAllreduceOptimizer"
    check_optimizer(optimizer, who)
    check_model(model, who)
    _check_k(num_steps_per_communication, who)
    wrapped = wrap(optimizer, _GradientAllreduce, "DistributedGradientAllreduceOptimizer")
    wrapped._addp_setup(model, num_steps_per_communication)
    return wrapped


def _check_k(k, who: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise AsyncDDPError(f"{who}: num_steps_per_communication must be an integer >= 1, got {k!r}")
