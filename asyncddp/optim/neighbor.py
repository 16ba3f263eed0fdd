"""Decentralized SGD: neighbour averaging of parameters, adapt-then-combine or adapt-with-combine.

``DistributedNeighborAllreduceOptimizer`` keeps one replica per rank and mixes replicas with the
neighbours after local updates (W is the mixing matrix of the topology or of the current step):

* ATC (``atc=True``, default): ``w+ = W (w - lr*g(w))`` — ``step()`` runs the user's update,
  then averages the new parameters with the neighbours. The parameters live in one flat buffer
  per dtype and device (their ``.data`` are views into it, as DDP's gradient buckets are), so a
  round is one in-place op per buffer: no packing before it, no copying back after. A
  parameter moved elsewhere later (``model.to()``, ``p.data = ...``) is noticed at the next
  round, which flattens afresh.
* AWC (``atc=False``): ``w+ = W w - lr*g(w)`` — a post-accumulate-grad hook starts the neighbour
  exchange of each parameter as soon as its gradient is ready (the parameter itself does not
  change until ``step()``), so communication overlaps the rest of backward; ``step()`` waits,
  writes the combined value and applies the local gradient.

Communication is chosen by the settable ``communication_type`` (``neighbor_allreduce``,
``hierarchical_neighbor_allreduce``, ``allreduce`` or ``empty``) and weighted by the settable
BlueFog attributes ``self_weight``/``src_weights``/``dst_weights`` (or the older
``send_neighbors``/``neighbor_weights`` pair; ``src_machine_weights``/``dst_machine_weights`` for
the hierarchical type). ``schedule=`` takes any dynamic schedule of ``asyncddp.topology`` — a
factory ``f(size, rank)`` or an iterator of ``NeighborStep`` — and the optimizer draws one step
per communication round, setting those attributes itself.

In a fault-tolerant job a lost rank interrupts one round: ``step()`` catches ``RankLostError``,
puts the parameters back as they were before the round, agrees with the survivors on the step
(``asyncddp.optim.survival``), restarts the schedule (from its factory) or drops weights that
named ranks of the old world, and redoes the round on the survivors.
"""

from __future__ import annotations

import enum

from asyncddp.comm.collectives import allreduce_nonblocking, allreduce_nonblocking_
from asyncddp.comm.context import rank, size
from asyncddp.comm.handles import synchronize
from asyncddp.comm.hierarchical import (
    hierarchical_neighbor_allreduce_nonblocking,
    hierarchical_neighbor_allreduce_nonblocking_,
)
from asyncddp.comm.neighbor import neighbor_allreduce_nonblocking, neighbor_allreduce_nonblocking_
from asyncddp.errors import OptimizerError, RankLostError
from asyncddp.optim.base import (DistributedOptimizer, check_model, check_optimizer, flatten_parameters, inner_step,
    named_trainable, wrap)
from asyncddp.optim.gradient import _check_k
from asyncddp.optim.survival import agree_after_loss, fault_tolerant, restore

__all__ = [
    "COMMUNICATION_TYPES",
    "DistributedNeighborAllreduceOptimizer",
    "DistributedHierarchicalNeighborAllreduceOptimizer",
    "DistributedAllreduceOptimizer",
]

COMMUNICATION_TYPES = (
    "neighbor_allreduce", "hierarchical_neighbor_allreduce", "allreduce", "empty",
)  # fmt: skip


def _check_type(value) -> str:
    # BlueFog passes a CommunicationType enum member; its name is ours.
    if isinstance(value, enum.Enum):
        value = value.name
    if value not in COMMUNICATION_TYPES:
        raise OptimizerError(
            f"communication_type={value!r} is not one of {', '.join(COMMUNICATION_TYPES)}"
        )
    return value


def _as_schedule(schedule):
    if schedule is None or hasattr(schedule, "__next__"):
        return schedule
    if callable(schedule):
        made = schedule(size(), rank=rank())
        if hasattr(made, "__next__"):
            return made
    raise OptimizerError(
        f"schedule={schedule!r} is neither an iterator of NeighborStep nor a factory f(size, rank) "
        "returning one; pass e.g. schedule=addp.one_peer_exponential_two"
    )


def _start(kind: str, x, name: str, kw: dict, in_place: bool):
    """Start one round's op of communication type ``kind`` on ``x``; None for ``empty``."""
    if kind == "neighbor_allreduce":
        op = neighbor_allreduce_nonblocking_ if in_place else neighbor_allreduce_nonblocking
        return op(x, name=f"nar.{name}", **kw)
    if kind == "hierarchical_neighbor_allreduce":
        op = hierarchical_neighbor_allreduce_nonblocking_ if in_place else hierarchical_neighbor_allreduce_nonblocking
        return op(x, name=f"hnar.{name}", **kw)
    if kind == "allreduce":
        op = allreduce_nonblocking_ if in_place else allreduce_nonblocking
        return op(x, average=True, name=f"par.{name}")
    return None


def _still_views(flat, params) -> bool:
    """True while every parameter still lives where ``flatten_parameters`` put it."""
    address, size = flat.data_ptr(), flat.element_size()
    for p in params:
        if p.data_ptr() != address or p.device != flat.device or p.dtype != flat.dtype:
            return False
        address += p.numel() * size
    return True


class _NeighborAveraging(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, communication_type, num_steps_per_communication, schedule, atc):
        self._addp_named = named_trainable(model, self)
        self.communication_type = _check_type(communication_type)
        self.num_steps_per_communication = num_steps_per_communication
        self.schedule = _as_schedule(schedule)
        # Kept to restart the schedule for a new world size after a rank is lost.
        rebuildable = callable(schedule) and not hasattr(schedule, "__next__")
        self._addp_schedule_factory = schedule if rebuildable else None
        self.atc = bool(atc)
        self.self_weight = None
        self.src_weights = None
        self.dst_weights = None
        self.send_neighbors = None  # the seed's idiom: dst ranks (list or {rank: weight})
        self.neighbor_weights = None  # ... with {src rank: weight}
        self.src_machine_weights = None
        self.dst_machine_weights = None
        self.enable_topo_check = True
        self._addp_step_count = 0
        self._addp_handles: dict = {}
        self._addp_round = None  # (communication_type, kwargs) fixed for the current round
        self._addp_hook_handles = []
        # ATC communicates after the whole update: one in-place op per flat group of parameters
        # (no packing before it, no copying back after). AWC keeps one op per parameter, started
        # from its gradient hook so that it overlaps the rest of backward.
        self._addp_flat = flatten_parameters(p for _, p in self._addp_named) if self.atc else []
        if not self.atc:
            for name, p in self._addp_named:
                self._addp_hook_handles.append(
                    p.register_post_accumulate_grad_hook(self._addp_hook(name))
                )

    # -- one communication round --
    def _addp_communicates(self) -> bool:
        return (self._addp_step_count + 1) % self.num_steps_per_communication == 0

    def _addp_begin_round(self):
        """Fix type and weights for this round (drawing the schedule's next step)."""
        if self._addp_round is not None:
            return self._addp_round
        kind = _check_type(self.communication_type)
        if self.schedule is not None:
            if kind != "neighbor_allreduce":
                raise OptimizerError(
                    f"schedule= drives neighbor_allreduce, but communication_type is {kind!r}"
                )
            step = next(self.schedule)
            if getattr(step, "has_aux", False):
                raise OptimizerError(
                    "this schedule keeps an auxiliary buffer per rank (CECA); the optimizer runs "
                    "plain steps only: use one_peer_exponential_two or equi_dyn_schedule"
                )
            self.self_weight = step.self_weight
            self.src_weights = dict(step.src_weights)
            self.dst_weights = dict(step.dst_weights)
        self._addp_round = (kind, self._addp_kwargs(kind))
        return self._addp_round

    def _addp_kwargs(self, kind: str) -> dict:
        if kind == "hierarchical_neighbor_allreduce":
            kw = {"enable_topo_check": self.enable_topo_check}
            if self.self_weight is not None or self.src_machine_weights is not None:
                kw.update(self_weight=self.self_weight, src_machine_weights=self.src_machine_weights)
            if self.dst_machine_weights is not None:
                kw["dst_machine_weights"] = self.dst_machine_weights
            return kw
        if kind != "neighbor_allreduce":
            return {}
        src, dst = self.src_weights, self.dst_weights
        if self.send_neighbors is not None:
            src, dst = self.neighbor_weights, self.send_neighbors
        kw = {"enable_topo_check": self.enable_topo_check}
        if self.self_weight is not None or src is not None:
            kw.update(self_weight=self.self_weight, src_weights=src)
        if dst is not None:
            kw["dst_weights"] = dst
        return kw

    def _addp_launch(self, name, p):
        kind, kw = self._addp_begin_round()
        self._addp_handles[id(p)] = (p, _start(kind, p.detach(), name, kw, in_place=False))

    def _addp_solo(self) -> bool:
        """One rank with default weights: combining is the identity, so nothing is launched."""
        return size() == 1 and self.self_weight in (None, 1.0)

    def _addp_hook(self, name):
        def hook(p):
            if self._addp_communicates() and id(p) not in self._addp_handles and not self._addp_solo():
                self._addp_launch(name, p)

        return hook

    def _addp_flat_round(self) -> None:
        """ATC: each flat group averaged in place (the parameters are views into it)."""
        kind, kw = self._addp_begin_round()
        if any(not _still_views(flat, params) for flat, params in self._addp_flat):
            # Something re-homed a parameter (model.to(), p.data = ...): flatten afresh.
            self._addp_flat = flatten_parameters(p for _, p in self._addp_named)
        started = [_start(kind, flat, f"flat{k}", kw, in_place=True)
                   for k, (flat, _) in enumerate(self._addp_flat)]
        for handle in started:
            if handle is not None:
                synchronize(handle)
        self._addp_round = None

    def _addp_finish_round(self) -> None:
        """Launch what no hook launched (same order everywhere), wait, write combined values."""
        if self.atc and self._addp_flat:
            return self._addp_flat_round()
        self._addp_begin_round()
        for name, p in self._addp_named:
            if id(p) not in self._addp_handles:
                self._addp_launch(name, p)
        # Every result first, then the writes: a round a lost rank interrupts changes nothing.
        results = [(p, synchronize(handle)) for p, handle in self._addp_handles.values() if handle is not None]
        for p, result in results:
            p.data.copy_(result)
        self._addp_handles.clear()
        self._addp_round = None

    def _addp_surviving_round(self) -> bool:
        """``_addp_finish_round``, redone on the survivors after a lost rank; False when this
        rank was a step behind the others (its round is dropped)."""
        backup = None
        if fault_tolerant():
            backup = [(flat, flat.clone()) for flat, _ in self._addp_flat]
        while True:
            try:
                self._addp_finish_round()
                return True
            except RankLostError:
                restore(backup)
                self._addp_handles.clear()
                self._addp_round = None
                self._addp_new_world()
                agreed = agree_after_loss(self._addp_step_count)
                if agreed > self._addp_step_count:
                    self._addp_step_count = agreed - 1  # step() counts this one
                    return False
                if self._addp_solo():
                    return True

    def _addp_new_world(self) -> None:
        """Weights naming ranks of the old world cannot hold; a schedule restarts for the new size."""
        self.send_neighbors = self.neighbor_weights = None
        self.src_machine_weights = self.dst_machine_weights = None
        self.self_weight = self.src_weights = self.dst_weights = None
        if self.schedule is not None:
            if self._addp_schedule_factory is None:
                import warnings

                warnings.warn("a rank was lost and schedule= was an iterator, which cannot be rebuilt "
                              "for the new size; continuing with the topology's weights (pass a factory "
                              "f(size, rank) to keep a dynamic schedule)", RuntimeWarning, stacklevel=3)
                self.schedule = None
            else:
                self.schedule = _as_schedule(self._addp_schedule_factory)

    def step(self, closure=None):
        communicates = self._addp_communicates() and not self._addp_solo()
        if self.atc:
            loss = inner_step(self, closure)
            if communicates:
                self._addp_surviving_round()
        else:
            if communicates:
                self._addp_surviving_round()
            loss = inner_step(self, closure)
        self._addp_step_count += 1
        return loss

    def remove_hooks(self) -> None:
        """Detach the AWC gradient hooks."""
        for handle in self._addp_hook_handles:
            handle.remove()
        self._addp_hook_handles = []


def DistributedNeighborAllreduceOptimizer(
    optimizer, model, communication_type="neighbor_allreduce", num_steps_per_communication=1,
    schedule=None, atc=True,
):  # fmt: skip
    """Wrap ``optimizer`` for decentralized training by neighbour averaging.

    Args:
        optimizer: a torch optimizer over ``model``'s parameters (stays an instance of its class).
        model: the module being trained.
        communication_type: ``neighbor_allreduce`` (default), ``hierarchical_neighbor_allreduce``,
            ``allreduce`` or ``empty`` (local steps only); settable later as an attribute.
        num_steps_per_communication: local steps per communication round.
        schedule: a dynamic topology (factory ``f(size, rank)`` or iterator of ``NeighborStep``).
        atc: adapt-then-combine (True) or adapt-with-combine, overlapping backward (False).
    """
    who = "DistributedNeighborAllreduceOptimizer"
    check_optimizer(optimizer, who)
    check_model(model, who)
    _check_k(num_steps_per_communication, who)
    wrapped = wrap(optimizer, _NeighborAveraging, who)
    wrapped._addp_setup(model, communication_type, num_steps_per_communication, schedule, atc)
    return wrapped


def DistributedHierarchicalNeighborAllreduceOptimizer(
    optimizer, model, num_steps_per_communication=1, atc=True
):
    """Machine-local average, then neighbour averaging between machines (see
    ``hierarchical_neighbor_allreduce``); weights via ``self_weight``, ``src_machine_weights``,
    ``dst_machine_weights``."""
    return DistributedNeighborAllreduceOptimizer(
        optimizer, model, "hierarchical_neighbor_allreduce", num_steps_per_communication, None, atc
    )


def DistributedAllreduceOptimizer(optimizer, model, num_steps_per_communication=1, atc=True):
    """Parameter averaging over all ranks after (ATC) or with (AWC) each local step."""
    return DistributedNeighborAllreduceOptimizer(
        optimizer, model, "allreduce", num_steps_per_communication, None, atc
    )
