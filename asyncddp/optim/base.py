"""Wrapping a user's torch optimizer without replacing it.

Every distributed optimizer here is built by ``wrap(optimizer, Mixin, ...)``: a new class is made
on the fly whose bases are ``(Mixin, type(optimizer))``, and the instance *shares* the user's
optimizer ``__dict__`` (the same ``param_groups`` list, the same ``state`` dict). So
``isinstance(opt, torch.optim.SGD)`` stays true, LR schedulers that edit ``param_groups`` see
the same dicts, ``state_dict()``/``load_state_dict()`` are torch's own, and the inner update is
``super().step()`` — the user's class's ``step``. (Horovod and BlueFog re-create the optimizer
from its param groups instead; sharing the dict keeps state the user already has, e.g. after
``load_state_dict``.) Mixins keep their own attributes under names starting with ``_addp_``
plus the BlueFog-style public settings (``self_weight``, ``src_weights``, ...).
"""

from __future__ import annotations

import torch

from asyncddp.errors import OptimizerError

__all__ = [
    "DistributedOptimizer", "wrap", "named_trainable", "check_optimizer", "check_model",
    "flatten_parameters", "point_into",
]


class DistributedOptimizer:
    """Base of every asyncddp optimizer mixin: ``isinstance(opt, DistributedOptimizer)`` tells a
    wrapped optimizer from a plain one."""

_CLASS_CACHE: dict = {}


def check_optimizer(optimizer, who: str) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise OptimizerError(
            f"{who}: expected a torch.optim.Optimizer as first argument, got "
            f"{type(optimizer).__name__}; build it first, e.g. optim.SGD(model.parameters(), lr=0.1)"
        )
    if getattr(optimizer, "_addp_wrapped", False):
        raise OptimizerError(
            f"{who}: this optimizer is already wrapped by {type(optimizer).__name__}; wrap the "
            "plain torch optimizer once"
        )


def check_model(model, who: str) -> None:
    if not isinstance(model, torch.nn.Module):
        raise OptimizerError(
            f"{who}: model= must be the torch.nn.Module being trained, got {type(model).__name__}"
        )


def named_trainable(model: torch.nn.Module, optimizer) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters that the optimizer updates and that require grad, in ``named_parameters`` order
    (the same on every rank, which is what keeps communication calls matched)."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) in owned]
    if not named:
        raise OptimizerError(
            "the optimizer updates none of model's parameters: pass the model whose parameters "
            "the optimizer was built on (optim.SGD(model.parameters(), ...))"
        )
    return named


def wrap(optimizer, mixin: type, name: str):
    """An instance of ``name(mixin, type(optimizer))`` sharing ``optimizer.__dict__``."""
    base = type(optimizer)
    key = (mixin, base)
    cls = _CLASS_CACHE.get(key)
    if cls is None:
        cls = type(
            f"{name}[{base.__name__}]", (mixin, base),
            {"__module__": mixin.__module__, "_addp_base": base},
        )  # fmt: skip
        _CLASS_CACHE[key] = cls
    wrapped = object.__new__(cls)
    wrapped.__dict__ = optimizer.__dict__
    wrapped._addp_wrapped = True
    return wrapped


def inner_step(wrapped, closure=None):
    """The user's optimizer class's own ``step``."""
    base = type(wrapped)._addp_base
    return base.step(wrapped, closure) if closure is not None else base.step(wrapped)


def point_into(params, flat: torch.Tensor) -> None:
    """Make ``params`` consecutive views of ``flat`` (same Parameter objects, so the optimizer's
    state and the autograd graph are untouched; only where their values live changes)."""
    offset = 0
    for p in params:
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()


def flatten_parameters(params) -> list[tuple[torch.Tensor, list]]:
    """``[(flat, params)]``: one flat tensor per (dtype, device) holding those parameters back to
    back, the parameters made views into it. A communication round then runs one in-place op on
    each flat tensor instead of packing the parameters before it and unpacking them after."""
    groups: dict = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    out = []
    for members in groups.values():
        flat = torch.cat([p.detach().reshape(-1) for p in members])
        point_into(members, flat)
        out.append((flat, members))
    return out
