"""Asynchronous decentralized SGD over one-sided windows: nobody waits for anybody.

``DistributedWinPutOptimizer`` creates one window per parameter dtype holding all trainable
parameters of that dtype back to back (collective, at construction; one window rather than one
per parameter because creating a window costs a collective allocation); the parameters become
views into that window's tensor (on the CPU, its own published memory: ``win_memory``), so
communication reads and writes them in place. Each ``step()`` runs
the user's update, then every ``num_steps_per_communication`` steps puts the new parameters
into the out-neighbours' window buffers (passive target: the neighbour takes no part) and
replaces them by the average of this rank's value and whatever the
in-neighbours last deposited (``win_update``; a neighbour that has not put since is counted with
its previous value). Ranks may therefore run at different speeds and take different numbers of
steps — there is no collective inside ``step()``. ``free()`` releases the windows and IS
collective: every rank calls it once, after its own training loop.
"""

from __future__ import annotations

import itertools

import torch

from asyncddp.comm.context import size
from asyncddp.comm.windows import win_create, win_free, win_memory, win_put, win_update
from asyncddp.errors import AsyncDDPError
from asyncddp.optim.base import (
    DistributedOptimizer,
    check_model,
    check_optimizer,
    flatten_parameters,
    inner_step,
    named_trainable,
    point_into,
    wrap,
)
from asyncddp.optim.gradient import _check_k

__all__ = ["DistributedWinPutOptimizer"]

_instances = itertools.count()


class _WinPut(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, num_steps_per_communication, window_prefix) -> None:
        self._addp_named = named_trainable(model, self)
        self.num_steps_per_communication = num_steps_per_communication
        self.self_weight = None  # with neighbor_weights: win_update's weights (default uniform)
        self.neighbor_weights = None
        self.dst_weights = None  # None: put to every out-neighbour with weight 1
        self.require_mutex = False
        self._addp_step_count = 0
        self._addp_solo = size() == 1
        # Same counter on every rank as long as every rank builds its optimizers in the same order.
        prefix = window_prefix if window_prefix is not None else f"winput{next(_instances)}"
        self.window_prefix = prefix
        self._addp_windows = []  # (window name, flat tensor, the parameters that are views of it)
        for k, (flat, params) in enumerate(flatten_parameters(p for _, p in self._addp_named)):
            window = f"{prefix}.{k}"
            win_create(flat, window)
            if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
                # Keep the parameters in the window's published block: put and update then
                # skip copying them there (one pass over the model each, per step).
                flat = win_memory(window)
                point_into(params, flat)
            self._addp_windows.append((window, flat, params))

    def step(self, closure=None):
        if not self._addp_windows:
            raise AsyncDDPError("DistributedWinPutOptimizer.step after free(): the windows are gone")
        loss = inner_step(self, closure)
        self._addp_step_count += 1
        # One rank with default weights: no neighbours to put to, and the update is the identity.
        solo = self._addp_solo and self.self_weight in (None, 1.0)
        if self._addp_step_count % self.num_steps_per_communication == 0 and not solo:
            for window, flat, _ in self._addp_windows:
                win_put(flat, window, dst_weights=self.dst_weights, require_mutex=self.require_mutex)
                # flat (the parameters) <- self_weight * flat + sum_j w_j * (what in-neighbour j put last)
                win_update(window, self_weight=self.self_weight,
                           neighbor_weights=self.neighbor_weights,
                           require_mutex=self.require_mutex)  # fmt: skip
        return loss

    @property
    def num_steps(self) -> int:
        """Local steps taken so far on this rank."""
        return self._addp_step_count

    def free(self) -> None:
        """Release the windows (collective: every rank, once, after its training loop)."""
        for window, flat, params in self._addp_windows:
            win_free(window)  # moves flat off the window's memory; re-point the views to it
            point_into(params, flat)
        self._addp_windows = []


def DistributedWinPutOptimizer(optimizer, model, num_steps_per_communication=1, window_prefix=None):
    """Wrap ``optimizer`` for asynchronous neighbour averaging through windows.

    Args:
        optimizer: a torch optimizer over ``model``'s parameters.
        model: the module being trained.
        num_steps_per_communication: local steps between puts.
        window_prefix: window name prefix (default ``winputN``, N counting optimizers built).
    """
    who = "DistributedWinPutOptimizer"
    check_optimizer(optimizer, who)
    check_model(model, who)
    _check_k(num_steps_per_communication, who)
    if window_prefix is not None and (not isinstance(window_prefix, str) or not window_prefix):
        raise AsyncDDPError(f"{who}: window_prefix must be a non-empty string, got {window_prefix!r}")
    wrapped = wrap(optimizer, _WinPut, who)
    wrapped._addp_setup(model, num_steps_per_communication, window_prefix)
    return wrapped
