"""Horovod/DDP-style gradient averaging with wait-free backpropagation, in buckets.

The trainable parameters are split, in reverse registration order (the order in which backward
usually finishes their gradients), into buckets of at most ``bucket_mb`` MiB of one dtype and
device, each with one flat gradient buffer (DDP's scheme, 25 MiB by default). A
post-accumulate-grad hook copies each finished gradient into its bucket; when a bucket is
complete, a nonblocking in-place allreduce of the whole buffer starts, so the exchange of late
layers' gradients overlaps the backward pass of early layers. Buckets are fixed at construction,
so every rank issues the same ops with no per-op negotiation. ``step()`` starts the buckets no
hook completed (parameters without a gradient this time count as zeros), waits, copies the
averages back into ``p.grad`` and runs the user's optimizer. Every rank must use the same
parameters in each backward pass (autograd then finishes them in the same order).

In a fault-tolerant job a lost rank interrupts one average: ``step()`` catches
``RankLostError``, agrees with the survivors on the step and averages the parameters once over
them (``asyncddp.optim.survival``), so the replicas are identical again; then it averages this
step's gradients (still intact in ``p.grad``) on the survivors, or drops them on a rank that
was a step behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asyncddp.comm.collectives import allreduce_nonblocking_
from asyncddp.comm.context import size
from asyncddp.comm.handles import synchronize
from asyncddp.errors import OptimizerError, RankLostError
from asyncddp.optim.base import DistributedOptimizer, check_model, check_optimizer, inner_step, named_trainable, wrap
from asyncddp.optim.survival import agree_after_loss

__all__ = ["DistributedGradientAllreduceOptimizer"]


@dataclass
class _Bucket:
    index: int
    params: list  # [(name, p)]
    offsets: list
    buffer: torch.Tensor
    ready: set = field(default_factory=set)  # ids of parameters whose gradient is in the buffer
    handle: object = None


def _buckets(named, bucket_bytes: float) -> list[_Bucket]:
    buckets, current, current_bytes = [], [], 0
    for name, p in reversed(named):
        nbytes = p.numel() * p.element_size()
        if current and (current_bytes + nbytes > bucket_bytes
                        or (p.dtype, p.device) != (current[0][1].dtype, current[0][1].device)):
            buckets.append(current)
            current, current_bytes = [], 0
        current.append((name, p))
        current_bytes += nbytes
    if current:
        buckets.append(current)
    out = []
    for index, members in enumerate(buckets):
        offsets, total = [], 0
        for _, p in members:
            offsets.append(total)
            total += p.numel()
        first = members[0][1]
        out.append(_Bucket(index, members, offsets, torch.zeros(total, dtype=first.dtype, device=first.device)))
    return out


class _GradientAllreduce(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, num_steps_per_communication: int, bucket_mb: float) -> None:
        self._addp_named = named_trainable(model, self)
        self._addp_hook_handles = []
        self.num_steps_per_communication = num_steps_per_communication
        self._addp_passes = {}  # id(p) -> backward passes that reached p since the last average
        self._addp_buckets = []
        self._addp_steps = 0  # averaged updates so far: what survivors agree on after a loss
        communicate = size() > 1
        if communicate:
            self._addp_buckets = _buckets(self._addp_named, bucket_mb * 1024 * 1024)
        self._addp_slot = {id(p): (bucket, bucket.offsets[k], name)
                           for bucket in self._addp_buckets for k, (name, p) in enumerate(bucket.params)}
        if communicate or num_steps_per_communication > 1:
            # One rank averages nothing, but still needs the count to accumulate k passes.
            for _, p in self._addp_named:
                self._addp_hook_handles.append(p.register_post_accumulate_grad_hook(self._addp_hook))

    def _addp_hook(self, p) -> None:
        # Accumulating several backward passes: communicate only after the k-th one.
        passes = self._addp_passes.get(id(p), 0) + 1
        self._addp_passes[id(p)] = passes
        if passes < self.num_steps_per_communication or id(p) not in self._addp_slot:
            return
        bucket, offset, name = self._addp_slot[id(p)]
        if passes > self.num_steps_per_communication:
            raise OptimizerError(
                f"gradient of {name!r} finished {passes} times before step(), with "
                f"num_steps_per_communication={self.num_steps_per_communication}: call step() "
                "after that many backward passes, or raise num_steps_per_communication"
            )
        bucket.buffer[offset:offset + p.numel()].copy_(p.grad.reshape(-1))
        bucket.ready.add(id(p))
        if len(bucket.ready) == len(bucket.params):
            self._addp_start(bucket)

    def _addp_start(self, bucket: _Bucket) -> None:
        bucket.handle = allreduce_nonblocking_(bucket.buffer, average=True, name=f"grad.bucket{bucket.index}")

    def _addp_accumulating(self) -> bool:
        """True while fewer than k backward passes ran since the last average (none: False)."""
        passes = max(self._addp_passes.values(), default=0)
        return 0 < passes < self.num_steps_per_communication

    def synchronize(self) -> None:
        """Wait for every gradient average started in this step (``step()`` calls this)."""
        if not self._addp_hook_handles or self._addp_accumulating():
            return  # hooks removed, or still accumulating: nothing to average yet
        reached = self._addp_passes
        self._addp_passes = {}
        for bucket in self._addp_buckets:  # the same order on every rank
            if bucket.handle is None:
                for k, (_, p) in enumerate(bucket.params):
                    if id(p) in bucket.ready:
                        continue
                    part = bucket.buffer[bucket.offsets[k]:bucket.offsets[k] + p.numel()]
                    if id(p) in reached and p.grad is not None:  # fewer passes than the others
                        part.copy_(p.grad.reshape(-1))
                    else:  # no gradient in this round: zeros
                        part.zero_()
                self._addp_start(bucket)
        for bucket in self._addp_buckets:  # every average first: a lost rank changes no p.grad
            synchronize(bucket.handle)
        for bucket in self._addp_buckets:
            for k, (_, p) in enumerate(bucket.params):
                if p.grad is not None:
                    p.grad.copy_(bucket.buffer[bucket.offsets[k]:bucket.offsets[k] + p.numel()].view_as(p.grad))
            bucket.handle = None
            bucket.ready.clear()

    def step(self, closure=None):
        if self._addp_accumulating():
            return None  # accumulate locally; the update comes with the k-th backward pass
        if not self._addp_surviving_average():
            return None
        self._addp_steps += 1
        return inner_step(self, closure)

    def _addp_surviving_average(self) -> bool:
        """``synchronize()``, redone on the survivors after a lost rank; False when this rank
        was a step behind the others (it drops this step's update)."""
        while True:
            try:
                self.synchronize()
                return True
            except RankLostError:
                passes = self.num_steps_per_communication
                self._addp_passes = {id(p): passes for _, p in self._addp_named if p.grad is not None}
                for bucket in self._addp_buckets:
                    bucket.handle = None
                    bucket.ready.clear()
                agreed = agree_after_loss(self._addp_steps, [p for _, p in self._addp_named])
                if agreed > self._addp_steps:
                    self._addp_steps = agreed
                    self._addp_passes = {}
                    return False

    def remove_hooks(self) -> None:
        """Detach the gradient hooks (the optimizer then steps without communicating)."""
        for handle in self._addp_hook_handles:
            handle.remove()
        self._addp_hook_handles = []
        self._addp_passes.clear()  # no longer counted: a half-counted round must not hold step()


def DistributedGradientAllreduceOptimizer(optimizer, model, num_steps_per_communication: int = 1,
                                          bucket_mb: float = 25.0):
    """Wrap ``optimizer`` so that ``step()`` applies the gradient averaged over all ranks.

    Args:
        optimizer: a torch optimizer over ``model``'s parameters (stays an instance of its class).
        model: the module being trained; its parameters get gradient hooks.
        num_steps_per_communication: backward passes accumulated locally per averaged update:
            the k-th pass starts the exchange, and ``step()`` (called once after the k passes,
            or after each of them) updates only then; earlier ``step()`` calls do nothing.
        bucket_mb: gradients are averaged in buckets of at most this many MiB (like DDP's
            ``bucket_cap_mb``); smaller buckets start sooner in backward, larger ones send fewer
            messages. A parameter larger than this gets a bucket of its own.
    """
    who = "DistributedGradientAllreduceOptimizer"
    check_optimizer(optimizer, who)
    check_model(model, who)
    _check_k(num_steps_per_communication, who)
    if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or not bucket_mb > 0:
        raise OptimizerError(f"{who}: bucket_mb must be a positive number of MiB, got {bucket_mb!r}")
    wrapped = wrap(optimizer, _GradientAllreduce, "DistributedGradientAllreduceOptimizer")
    wrapped._addp_setup(model, num_steps_per_communication, float(bucket_mb))
    return wrapped


def _check_k(k, who: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise OptimizerError(f"{who}: num_steps_per_communication must be an integer >= 1, got {k!r}")
