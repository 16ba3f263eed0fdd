"""DeAR: gradient allreduce split into a reduce-scatter in backward and an all-gather in forward.

Modules that own trainable parameters are taken in registration order (the forward order of
ordinary models) and packed into groups: a module joins the current group while the group stays
under ``threshold_mb`` MiB, or, with ``num_nearby_layers=k``, every k modules form a group.
Each group has one flat gradient buffer padded to a multiple of the world size.

* backward: a post-accumulate-grad hook copies each gradient into its group's buffer; when the
  group is complete, a nonblocking reduce-scatter (average) of the buffer starts.
* ``step()``: waits for the reduce-scatters and starts the all-gather of group 0's shards.
* next forward: the pre-hook of each group's first module waits for that group's all-gather,
  starts the next group's, and applies the update of the group's parameters (gradient = the
  gathered averages, gathered back into the group's buffer) right before the module runs, so
  the all-gather overlaps the forward pass.

Updates are therefore applied lazily: call ``flush()`` (or run a forward) before reading the
parameters after ``step()``. The update is the user's optimizer run on a subset of parameters,
with the other parameters' gradients set aside (optimizers skip parameters whose grad is None).

In a fault-tolerant job a lost rank interrupts either the reduce-scatters (in ``step()``) or an
all-gather (in a forward pre-hook). Either way the survivors agree on the step
(``asyncddp.optim.survival``) and pad the buffers for the new size; a reduce-scatter is redone
from the gradients (still in ``p.grad``) unless this rank was a step behind, and an interrupted
all-gather's update is dropped. The parameters are then averaged once, at the next completed
reduce phase (the same point on every survivor, and never in the middle of a forward pass,
which autograd would refuse), so the replicas are identical again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asyncddp.comm.collectives import allgather_nonblocking, reduce_scatter_nonblocking
from asyncddp.comm.context import size
from asyncddp.comm.handles import synchronize
from asyncddp.errors import OptimizerError, RankLostError
from asyncddp.optim.base import DistributedOptimizer, check_model, check_optimizer, inner_step, named_trainable, wrap
from asyncddp.optim.survival import agree_after_loss

__all__ = ["DistributedDeAROptimizer", "plan_groups"]


@dataclass
class _Group:
    index: int
    modules: list
    params: list  # [(name, p)]
    offsets: list = field(default_factory=list)
    buffer: torch.Tensor | None = None
    num_ready: int = 0
    handle: object = None  # reduce-scatter in flight, then all-gather in flight
    shard: torch.Tensor | None = None
    total: int = 0  # elements of the group's parameters (the buffer is padded beyond)


def plan_groups(sizes_bytes: list[int], threshold_mb: float | None, num_nearby_layers: int | None):
    """Split modules (given their parameter bytes, in order) into groups of consecutive indices."""
    groups, current, current_bytes = [], [], 0
    limit = None if threshold_mb is None else threshold_mb * 1024 * 1024
    for i, nbytes in enumerate(sizes_bytes):
        if num_nearby_layers is not None:
            full = len(current) >= num_nearby_layers
        else:
            full = bool(current) and current_bytes + nbytes > limit
        if full:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += nbytes
    if current:
        groups.append(current)
    return groups


class _DeAR(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, threshold_mb, num_nearby_layers) -> None:
        trainable = {id(p): n for n, p in named_trainable(model, self)}
        modules = []
        for module in model.modules():
            own = [(trainable[id(p)], p) for p in module.parameters(recurse=False) if id(p) in trainable]
            if own:
                modules.append((module, own))
        dtypes = {p.dtype for _, own in modules for _, p in own}
        if len(dtypes) > 1:
            raise OptimizerError(
                f"DistributedDeAROptimizer: parameters have several dtypes {sorted(map(str, dtypes))}; "
                "DeAR fuses gradients into one buffer per group, so use one dtype (model.float())"
            )
        sizes = [sum(p.numel() * p.element_size() for _, p in own) for _, own in modules]
        self._addp_groups = []
        self._addp_group_of = {}
        n = size()
        for g, members in enumerate(plan_groups(sizes, threshold_mb, num_nearby_layers)):
            group = _Group(g, [modules[i][0] for i in members], [x for i in members for x in modules[i][1]])
            total = 0
            for _, p in group.params:
                group.offsets.append(total)
                total += p.numel()
                self._addp_group_of[id(p)] = group
            group.total = total
            self._addp_groups.append(group)
        self._addp_pad(n)
        self._addp_steps = 0  # reduce phases completed: what survivors agree on after a loss
        self._addp_resync = False  # average the parameters at the next completed reduce phase
        self._addp_pending = []  # groups whose all-gather is started or queued, in order
        self._addp_hook_handles = []
        self._addp_solo = n == 1
        if self._addp_solo:
            return  # one rank: the mean gradient is the local one; step() is the plain step
        for _, p in named_trainable(model, self):
            self._addp_hook_handles.append(p.register_post_accumulate_grad_hook(self._addp_grad_hook))
        for group in self._addp_groups:
            self._addp_hook_handles.append(
                group.modules[0].register_forward_pre_hook(self._addp_pre_hook(group.index))
            )

    def _addp_pad(self, n: int) -> None:
        """Fresh group buffers padded to a multiple of the world size ``n``."""
        for group in self._addp_groups:
            first = group.params[0][1]
            group.buffer = torch.zeros(-(-group.total // n) * n, dtype=first.dtype, device=first.device)

    # -- backward: gradients into buffers, reduce-scatter per complete group --
    def _addp_grad_hook(self, p) -> None:
        group = self._addp_group_of[id(p)]
        if self._addp_pending:
            self.flush()  # a backward before the previous step's updates were all applied
        k = next(i for i, (_, q) in enumerate(group.params) if q is p)
        group.buffer[group.offsets[k] : group.offsets[k] + p.numel()].copy_(p.grad.reshape(-1))
        group.num_ready += 1
        if group.num_ready == len(group.params):
            self._addp_reduce(group)

    def _addp_reduce(self, group: _Group) -> None:
        group.handle = reduce_scatter_nonblocking(
            group.buffer, average=True, name=f"dear.rs.{group.index}"
        )

    # -- step: finish reduce-scatters, start the first all-gather --
    def step(self, closure=None):
        if closure is not None:
            raise OptimizerError("DistributedDeAROptimizer.step does not take a closure")
        if self._addp_solo:
            inner_step(self)
            return None
        self.flush()
        while True:
            try:
                self._addp_reduce_all()
                break
            except RankLostError:
                if not self._addp_after_loss(redo=True):
                    return None
        self._addp_steps += 1
        if self._addp_resync:
            self._addp_resync = False
            self._addp_average_parameters()
        self._addp_pending = list(self._addp_groups)
        self._addp_start_gather(self._addp_pending[0])
        return None

    def _addp_reduce_all(self) -> None:
        for group in self._addp_groups:
            if group.handle is None:  # parameters without gradient this time: zeros
                for k, (_, p) in enumerate(group.params):
                    if p.grad is None:
                        group.buffer[group.offsets[k] : group.offsets[k] + p.numel()].zero_()
                self._addp_reduce(group)
        for group in self._addp_groups:
            group.shard = synchronize(group.handle)
        for group in self._addp_groups:
            group.handle = None
            group.num_ready = 0

    def _addp_after_loss(self, redo: bool) -> bool:
        """Survivors agree on the step after ``RankLostError``; True when this rank redoes its
        reduce-scatters (they are refilled from ``p.grad``), False when it drops them."""
        for group in self._addp_groups:
            group.handle, group.shard, group.num_ready = None, None, 0
        self._addp_pending = []
        self._addp_pad(size())
        agreed = agree_after_loss(self._addp_steps)
        self._addp_resync = True
        if not redo or agreed > self._addp_steps:
            self._addp_steps = agreed
            return False
        for group in self._addp_groups:
            for k, (_, p) in enumerate(group.params):
                if p.grad is not None:
                    group.buffer[group.offsets[k] : group.offsets[k] + p.numel()].copy_(p.grad.reshape(-1))
        return True

    def _addp_average_parameters(self) -> None:
        from asyncddp.optim.parameters import allreduce_parameters

        params = [p for group in self._addp_groups for _, p in group.params]
        while True:
            try:
                allreduce_parameters(params)
                return
            except RankLostError:
                self._addp_pad(size())
                agree_after_loss(self._addp_steps)

    def _addp_start_gather(self, group: _Group) -> None:
        # Into the group's own buffer: free once its reduce-scatter has delivered the shard, and
        # not written again before the next backward, after the update has used the gradients.
        group.handle = allgather_nonblocking(group.shard, name=f"dear.ag.{group.index}", out=group.buffer)
        group.shard = None

    # -- forward: apply updates group by group --
    def _addp_pre_hook(self, index: int):
        def hook(module, inputs):
            while self._addp_pending and self._addp_pending[0].index <= index:
                self._addp_apply_next()

        return hook

    def _addp_apply_next(self) -> None:
        group = self._addp_pending.pop(0)
        try:
            gathered = synchronize(group.handle)
        except RankLostError:
            self._addp_after_loss(redo=False)  # this and the later groups' updates are dropped
            return
        group.handle = None
        if self._addp_pending:
            self._addp_start_gather(self._addp_pending[0])
        mine = {id(p) for _, p in group.params}
        saved = {}
        for pg in self.param_groups:
            for p in pg["params"]:
                if id(p) not in mine:
                    saved[id(p)] = (p, p.grad)
                    p.grad = None
        kept = {}
        for k, (_, p) in enumerate(group.params):
            kept[id(p)] = p.grad
            # A view: the buffer is not touched until the next backward, and the user's
            # gradients are put back right after the update.
            p.grad = gathered[group.offsets[k] : group.offsets[k] + p.numel()].view_as(p)
        try:
            inner_step(self)
        finally:
            for _, p in group.params:
                p.grad = kept[id(p)]
            for p, grad in saved.values():
                p.grad = grad

    def flush(self) -> None:
        """Apply every update still waiting for its module's forward (e.g. before evaluation)."""
        while self._addp_pending:
            self._addp_apply_next()

    def remove_hooks(self) -> None:
        self.flush()
        for handle in self._addp_hook_handles:
            handle.remove()
        self._addp_hook_handles = []


def DistributedDeAROptimizer(optimizer, model, threshold_mb: float = 25, num_nearby_layers=None):
    """Wrap ``optimizer`` for DeAR's decoupled allreduce (results equal gradient averaging).

    Args:
        optimizer: a torch optimizer over ``model``'s parameters.
        model: the module being trained (its modules' order defines the groups).
        threshold_mb: group size limit in MiB (ignored with ``num_nearby_layers``).
        num_nearby_layers: group every this many parameter-owning modules instead.
    """
    who = "DistributedDeAROptimizer"
    check_optimizer(optimizer, who)
    check_model(model, who)
    if num_nearby_layers is not None and (
        not isinstance(num_nearby_layers, int) or num_nearby_layers < 1
    ):
        raise OptimizerError(f"{who}: num_nearby_layers must be an integer >= 1, got {num_nearby_layers!r}")
    if num_nearby_layers is None and not (isinstance(threshold_mb, (int, float)) and threshold_mb > 0):
        raise OptimizerError(f"{who}: threshold_mb must be a positive number, got {threshold_mb!r}")
    wrapped = wrap(optimizer, _DeAR, who)
    wrapped._addp_setup(model, threshold_mb, num_nearby_layers)
    return wrapped
