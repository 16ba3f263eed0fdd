"""Making replicas agree: broadcast or average parameters, broadcast optimizer state.

``broadcast_parameters`` and ``allreduce_parameters`` take what users have at hand — a
``state_dict()``, ``named_parameters()`` pairs, or a list of tensors — and write the result in
place, in the order given (dicts keep insertion order, so every rank issues the same calls).
``broadcast_optimizer_state`` serialises the root's ``optimizer.state_dict()`` with
``torch.save`` and broadcasts the bytes: this copes with anything torch 2.x keeps there (tensor
``step``, ``None`` options such as ``foreach``, lazily created state on ranks that have not
stepped yet) and is bit-exact, at the price of one copy through host memory.
"""

from __future__ import annotations

import io

import torch

from asyncddp.comm.collectives import (
    allreduce_nonblocking_,
    broadcast,
    broadcast_nonblocking_,
)
from asyncddp.comm.engine import get_engine
from asyncddp.comm.handles import synchronize
from asyncddp.comm.neighbor_plan import as_rank
from asyncddp.errors import OptimizerError

__all__ = ["broadcast_parameters", "allreduce_parameters", "broadcast_optimizer_state"]


def _tensors(params, who: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, torch.nn.Module):
        raise OptimizerError(f"{who}: pass model.state_dict() or model.parameters(), not the module")
    items = list(params.items()) if isinstance(params, dict) else list(params)
    out = []
    for k, item in enumerate(items):
        name, tensor = item if isinstance(item, tuple) and len(item) == 2 else (str(k), item)
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise OptimizerError(
                f"{who}: entry {name!r} is a {type(tensor).__name__}, not a tensor; pass "
                "model.state_dict(), model.named_parameters() or a list of tensors"
            )
        out.append((str(name), tensor))
    return out


def _check_root(root_rank, who: str) -> int:
    return as_rank(root_rank, get_engine().size, f"{who}: root_rank")


def broadcast_parameters(params, root_rank: int = 0) -> None:
    """Overwrite every tensor in ``params`` with ``root_rank``'s value (in place, bit-exact)."""
    root_rank = _check_root(root_rank, "broadcast_parameters")
    named = _tensors(params, "broadcast_parameters")
    # detach(): the comm thread writes the result, and no_grad does not cross threads.
    handles = [
        broadcast_nonblocking_(t.detach(), root_rank, name=f"broadcast.{n}") for n, t in named
    ]
    for handle in handles:
        synchronize(handle)


def allreduce_parameters(params) -> None:
    """Replace every floating tensor in ``params`` by its average over all ranks (in place).

    Integer tensors (e.g. BatchNorm's ``num_batches_tracked``) are left alone.
    """
    named = _tensors(params, "allreduce_parameters")
    handles = [
        allreduce_nonblocking_(t.detach(), average=True, name=f"allreduce.{n}")
        for n, t in named
        if t.is_floating_point() or t.is_complex()
    ]
    for handle in handles:
        synchronize(handle)


def broadcast_optimizer_state(optimizer, root_rank: int = 0) -> None:
    """Give every rank ``root_rank``'s optimizer state and hyper-parameters (bit-exact).

    Collective: call on every rank. Parameters are not touched; broadcast them with
    ``broadcast_parameters``. LR schedulers see the new ``param_groups`` values.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise OptimizerError(
            f"broadcast_optimizer_state expects a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    root_rank = _check_root(root_rank, "broadcast_optimizer_state")
    engine = get_engine()
    payload = torch.empty(0, dtype=torch.uint8)
    if engine.rank == root_rank:
        buffer = io.BytesIO()
        state = optimizer.state_dict()
        torch.save(_to_cpu(state), buffer)
        payload = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    length = broadcast(torch.tensor([payload.numel()], dtype=torch.int64), root_rank)
    if engine.rank != root_rank:
        payload = torch.empty(int(length[0]), dtype=torch.uint8)
    payload = broadcast(payload, root_rank)
    if engine.rank == root_rank:
        return
    state = torch.load(io.BytesIO(payload.numpy().tobytes()), weights_only=False)
    groups = optimizer.param_groups
    if len(groups) != len(state["param_groups"]) or any(
        len(g["params"]) != len(s["params"]) for g, s in zip(groups, state["param_groups"])
    ):
        raise OptimizerError(
            f"broadcast_optimizer_state: rank {engine.rank}'s optimizer has a different number "
            f"of parameter groups or parameters than rank {root_rank}'s; build the same "
            "optimizer on every rank"
        )
    optimizer.load_state_dict(state)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
