"""Asynchronous decentralized SGD over one-sided windows: nobody waits for anybody.

``DistributedWinPutOptimizer`` creates one window per parameter dtype holding all trainable
parameters of that dtype back to back (collective, at construction; one window rather than one
per parameter because creating a window costs a collective allocation); the parameters become
views into that window's tensor (on the CPU, its own published memory: ``win_memory``), so
communication reads and writes them in place. Every ``num_steps_per_communication`` steps
(or backward passes), ``step()`` puts the parameters into the out-neighbours' window buffers
(passive target: the neighbour takes no part) and replaces them by the average of this rank's
value and whatever the in-neighbours last deposited (``win_update``; a neighbour that has not
put since is counted with its previous value); every ``step()`` then runs the user's update
with the gradient computed before the averaging (BlueFog's order). Ranks may therefore run at different speeds and take different numbers of
steps — there is no collective inside ``step()``. ``free()`` releases the windows and IS
collective: every rank calls it once, after its own training loop.

``max_lag`` bounds how far ahead of its in-neighbours a rank may run: with ``max_lag = L`` the
averaging of a rank's n-th communication round waits until each in-neighbour has completed its
round n - L put (read one-sidedly from the window's put counts, so the neighbour takes no part),
for at most ``LAG_WAIT_S`` seconds, after which it averages with what is there and warns once.
``None`` (the default) never waits. BlueFog's optimizer is bounded too: its background thread
joins a job-wide negotiation round after every batch of ops, so no rank starts a put before
every other rank has made its previous one (at most one round behind), and while ranks keep
pace its puts, issued at forward time, land before the neighbours average that round. The BlueFog
layer (``asyncddp.compat``) sets ``max_lag = 0``, what BlueFog shows while ranks keep pace.
Without a bound, a rank that the OS schedules more often than its neighbours (an oversubscribed
machine) keeps averaging with their old values and drags them back.

In a fault-tolerant job nothing one-sided notices a dead neighbour (a put into its shared
memory just lands), so each communicating ``step()`` asks the communication core, locally,
whether a rank is known lost (``engine.check_world``). If so every survivor joins the
recovery, which re-creates the windows on the new world from each rank's current parameters;
the optimizer points its parameters at the new windows' memory and carries on. Nothing else is
redone: with no collective in ``step()`` there is no step to agree on.
"""

from __future__ import annotations

import itertools
import time
import warnings

import torch

from asyncddp.comm.collectives import barrier
from asyncddp.comm.context import rank, size
from asyncddp.comm.windows import win_create, win_free, win_memory, win_put, win_put_counts, win_update
from asyncddp.comm import engine, recovery
from asyncddp.errors import OptimizerError, RankLostError
from asyncddp.optim.base import (DistributedOptimizer, check_model, check_optimizer, flatten_parameters, inner_step,
    named_trainable, point_into, wrap)
from asyncddp.optim.gradient import _check_k

__all__ = ["DistributedWinPutOptimizer"]

_instances = itertools.count()
LAG_WAIT_S = 10.0  # the longest a round waits for a neighbour (see max_lag)


class _WinPut(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, num_steps_per_communication, window_prefix) -> None:
        self._addp_named = named_trainable(model, self)
        self.num_steps_per_communication = num_steps_per_communication
        self.self_weight = None  # with neighbor_weights: win_update's weights (default uniform)
        self.neighbor_weights = None
        self.dst_weights = None  # None: put to every out-neighbour with weight 1
        self.require_mutex = False
        # True: step() waits for every rank before averaging, so the average sees every
        # neighbour's put of this round (lockstep; BlueFog's attribute of the same name).
        self.force_barrier = False
        self.max_lag = None  # rounds this rank may run ahead of its in-neighbours (None: any)
        self._addp_lag_warned = False
        self._addp_step_count = 0
        self._addp_since = 0  # steps since the last communication
        self._addp_passes = {}  # id(p) -> backward passes that reached p since then
        self._addp_solo = size() == 1
        self._addp_put = False  # this round's put is done
        # The instance number makes names unique, so an optimizer left alive (say, by an
        # exception) never blocks the next one; it is the same on every rank as long as every
        # rank builds its optimizers in the same order (win_create checks that names agree).
        number = next(_instances)
        prefix = window_prefix if window_prefix is not None else "winput"
        self.window_prefix = prefix
        self._addp_windows = []  # (window name, flat tensor, the parameters that are views of it)
        for k, (flat, params) in enumerate(flatten_parameters(p for _, p in self._addp_named)):
            window = f"{prefix}.{number}.{k}"
            win_create(flat, window)
            if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
                # Keep the parameters in the window's published block: put and update then
                # skip copying them there (one pass over the model each, per step).
                flat = win_memory(window)
                point_into(params, flat)
            self._addp_windows.append((window, flat, params))
        # Count backward passes, so that k passes before one step() communicate once.
        self._addp_hook_handles = [p.register_post_accumulate_grad_hook(self._addp_count)
                                   for _, p in self._addp_named]

    def _addp_count(self, p) -> None:
        passes = self._addp_passes.get(id(p), 0) + 1
        self._addp_passes[id(p)] = passes
        if passes == self.num_steps_per_communication and not self._addp_put:
            # The backward pass that completes the round: the parameters are what the gradient
            # is computed at, and stay so until step(). Putting them now rather than in step()
            # gives the neighbours' puts the rest of the backward pass to land before each
            # rank's win_update reads them (BlueFog puts at forward time for the same reason).
            self._addp_put_all()

    def _addp_put_all(self) -> None:
        self._addp_put = True
        if self._addp_solo:
            return
        for window, flat, _ in self._addp_windows:
            win_put(flat, window, dst_weights=self.dst_weights, require_mutex=self.require_mutex)

    def step(self, closure=None):
        if not self._addp_windows:
            raise OptimizerError("DistributedWinPutOptimizer.step after free(): the windows are gone")
        self._addp_step_count += 1
        self._addp_since += 1
        # Communicate after k steps or k backward passes, whichever comes first: one backward
        # per step counts steps, k backward passes before one step() count passes.
        progress = max(self._addp_since, max(self._addp_passes.values(), default=0))
        if progress >= self.num_steps_per_communication:
            self._addp_check_world()
            # One rank with default weights: no neighbours to put to, the update is the identity.
            solo = self._addp_solo and self.self_weight in (None, 1.0)
            if not self._addp_put:  # no backward pass completed the round (a closure, say)
                self._addp_put_all()
            if self.force_barrier:
                try:
                    barrier()
                except RankLostError:  # the world was rebuilt meanwhile: nothing to wait for
                    self._addp_new_world()
            self._addp_since = 0
            self._addp_passes.clear()
            self._addp_put = False
            for window, _, _ in self._addp_windows if not solo else ():
                self._addp_wait_for_in_neighbours(window)
                # Average the parameters the gradient was computed at with what the
                # in-neighbours put last; the local update follows (BlueFog's order).
                win_update(window, self_weight=self.self_weight,
                           neighbor_weights=self.neighbor_weights,
                           require_mutex=self.require_mutex)  # fmt: skip
        return inner_step(self, closure)

    def _addp_wait_for_in_neighbours(self, window: str) -> None:
        """Wait (see ``max_lag``) until no in-neighbour is more than ``max_lag`` puts behind."""
        # In a fault-tolerant job a lost neighbour's count never moves: no waiting there.
        if self.max_lag is None or self._addp_solo or recovery.enabled():
            return
        me = rank()
        deadline, pause = time.monotonic() + LAG_WAIT_S, 2e-5
        while True:
            counts = win_put_counts(window)
            wanted = counts.pop(me) - self.max_lag
            behind = sorted(j for j, count in counts.items() if count < wanted)
            if not behind:
                return
            if time.monotonic() > deadline:
                if not self._addp_lag_warned:
                    self._addp_lag_warned = True
                    warnings.warn(f"DistributedWinPutOptimizer: in-neighbours {behind} did not make "
                                  f"their put of this round within {LAG_WAIT_S:g} s (max_lag="
                                  f"{self.max_lag}); averaging with their older values. Do all ranks "
                                  "take the same number of steps?", RuntimeWarning, stacklevel=3)
                return
            # Sleep rather than spin: on a busy machine the neighbour needs this CPU.
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)

    def _addp_check_world(self) -> None:
        """After a lost rank, point the parameters at the windows rebuilt on the new world."""
        while True:
            try:
                engine.check_world()
                return
            except RankLostError:
                self._addp_new_world()
                self._addp_put = False  # the round's put went to the old world: put again

    def _addp_new_world(self) -> None:
        self._addp_solo = size() == 1
        self.self_weight = self.neighbor_weights = self.dst_weights = None  # they named old ranks
        windows = []
        for window, flat, params in self._addp_windows:
            if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
                flat = win_memory(window)
                point_into(params, flat)
            windows.append((window, flat, params))
        self._addp_windows = windows

    @property
    def num_steps(self) -> int:
        """Local steps taken so far on this rank."""
        return self._addp_step_count

    @property
    def window_names(self) -> list[str]:
        """The names of this optimizer's windows (empty after ``free()``)."""
        return [window for window, _, _ in self._addp_windows]

    def free(self) -> None:
        """Release the windows (collective: every rank, once, after its training loop).
        Calling it again does nothing."""
        if self._addp_windows and recovery.enabled():
            # Freeing is collective, so it needs the world as it is now: a barrier meets a loss
            # that no step noticed yet (nothing one-sided waits for a dead rank).
            while True:
                try:
                    barrier()
                    break
                except RankLostError:
                    self._addp_new_world()
        for handle in self._addp_hook_handles:
            handle.remove()
        self._addp_hook_handles = []
        for window, flat, params in self._addp_windows:
            win_free(window)  # moves flat off the window's memory; re-point the views to it
            point_into(params, flat)
        self._addp_windows = []

    def unregister_window(self) -> None:
        """BlueFog's name for ``free()`` (collective, idempotent)."""
        self.free()


def DistributedWinPutOptimizer(optimizer, model, num_steps_per_communication=1, window_prefix=None):
    """Wrap ``optimizer`` for asynchronous neighbour averaging through windows.

    Args:
        optimizer: a torch optimizer over ``model``'s parameters.
        model: the module being trained.
        num_steps_per_communication: local steps (or backward passes, when several run
            before one ``step()``) between puts.
        window_prefix: window name prefix; windows are named ``PREFIX.N.K`` (default prefix
            ``winput``; N counts optimizers built, K the parameter dtype group).

    Settable attributes, read at each round: ``dst_weights``, ``self_weight`` with
    ``neighbor_weights``, ``require_mutex``, ``force_barrier`` and ``max_lag`` (module docstring).
    """
    who = "DistributedWinPutOptimizer"
    check_optimizer(optimizer, who)
    check_model(model, who)
    _check_k(num_steps_per_communication, who)
    if window_prefix is not None and (not isinstance(window_prefix, str) or not window_prefix):
        raise OptimizerError(f"{who}: window_prefix must be a non-empty string, got {window_prefix!r}")
    wrapped = wrap(optimizer, _WinPut, who)
    wrapped._addp_setup(model, num_steps_per_communication, window_prefix)
    return wrapped
