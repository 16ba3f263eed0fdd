"""CHOCO-SGD: decentralized SGD that sends compressed model differences (Koloskova et al., 2019).

``DistributedCompressedNeighborOptimizer`` runs the user's update, then one gossip round in which
each rank sends only ``C(x − x̂)`` — top-k entries, random-k entries, int8/int4 or sign — and
moves its model toward the neighbours' public copies: ``x += γ Σ_s w_s (x̂_s − x̂_self)``
(``asyncddp.optim.public_copies``). With the identity compressor and ``γ = 1`` this is exactly
adapt-then-combine neighbour averaging; with compression, the public copies carry what was not
sent into later rounds, so the replicas still reach consensus.

Peers and weights follow the neighbour optimizer: the topology's weights, the settable
``self_weight``/``src_weights``/``dst_weights``, or ``schedule=`` (a dynamic schedule factory such
as ``one_peer_exponential_two``, whose steps set them). The parameters live in one flat buffer
per dtype and device, each round sends one payload per destination holding all of them.

In a fault-tolerant job a lost rank interrupts a round before anything changed; ``step()``
clears the public copies (each edge then starts again from one dense send), restarts the
schedule for the new world, agrees with the survivors on the step and redoes the round, or
drops it on a rank that was a step behind.
"""

from __future__ import annotations

from asyncddp.comm.context import rank, size
from asyncddp.errors import OptimizerError, RankLostError
from asyncddp.optim.base import DistributedOptimizer, check_model, check_optimizer, flatten_parameters, inner_step, \
    named_trainable, wrap
from asyncddp.optim.compression import parse_compressor
from asyncddp.optim.neighbor import _as_schedule, _still_views
from asyncddp.optim.public_copies import PublicCopies
from asyncddp.optim.rounds import next_round
from asyncddp.optim.survival import agree_after_loss

__all__ = ["DistributedCompressedNeighborOptimizer", "default_consensus_lr", "check_rate"]

_WHO = "DistributedCompressedNeighborOptimizer"

# γ by compressor. CHOCO converges only for γ of the order of the share of ``x − x̂`` a round
# carries (Koloskova et al.: γ shrinks with the compressor's contraction δ). Measured on pure
# consensus (4 ranks, Exp-2, Gaussian differences, the hardest case for top-k): top-1% converges
# at γ = 0.02 and diverges at 0.1, top-10% converges at 0.05 and diverges at 0.5, rand-1% needs
# less than 0.01, sign diverges at 1 and settles at 0.5, int8 and int4 converge at 1.
_FIXED_RATE = {"identity": 1.0, "int8": 1.0, "int4": 1.0, "sign": 0.3}


def default_consensus_lr(compressor) -> float:
    """The default γ for ``compressor`` (a spec or ``Compressor``): 1 for identity, int8 and
    int4, 0.3 for sign, ``min(0.5, 2F)`` for ``topk:F`` and ``F/2`` for ``randk:F``."""
    codec = parse_compressor(compressor)
    kind = codec.spec.split(":")[0]
    if kind == "topk":
        return min(0.5, 2 * codec.fraction)
    if kind == "randk":
        return codec.fraction / 2
    return _FIXED_RATE.get(kind, 1.0)


def check_rate(value, option: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise OptimizerError(f"{who}: {option} must be a number in (0, 1], got {value!r}")
    return float(value)


def rebuilt_schedule(factory, schedule):
    """A dynamic schedule restarted for the new world (None, warning, when it cannot be)."""
    if schedule is None:
        return None
    if factory is None:
        import warnings

        warnings.warn("a rank was lost and schedule= was an iterator, which cannot be rebuilt for the "
                      "new size; continuing with the topology's weights (pass a factory f(size, rank))",
                      RuntimeWarning, stacklevel=4)
        return None
    return _as_schedule(factory)


class _CompressedNeighbor(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, compressor, consensus_lr, schedule) -> None:
        self._addp_named = named_trainable(model, self)
        self.compressor = compressor
        self.consensus_lr = consensus_lr
        self.schedule = _as_schedule(schedule)
        rebuildable = callable(schedule) and not hasattr(schedule, "__next__")
        self._addp_schedule_factory = schedule if rebuildable else None
        self.self_weight = self.src_weights = self.dst_weights = None
        self.enable_topo_check = True
        self._addp_step_count = 0
        self._addp_flat = flatten_parameters(p for _, p in self._addp_named)
        self._addp_copies = PublicCopies(compressor)

    def _addp_flats(self) -> list:
        if any(not _still_views(flat, params) for flat, params in self._addp_flat):
            # Something re-homed a parameter (model.to(), p.data = ...): flatten afresh.
            self._addp_flat = flatten_parameters(p for _, p in self._addp_named)
            self._addp_copies.clear()
        return [flat for flat, _ in self._addp_flat]

    def _addp_round(self) -> None:
        peers = next_round(self.schedule, self.self_weight, self.src_weights, self.dst_weights,
                           bool(self.enable_topo_check), _WHO)  # fmt: skip
        self._addp_copies.round(self._addp_flats(), peers.dsts, peers.recvs, self.consensus_lr, me=rank(),
                                round_index=self._addp_step_count, check=peers.check, name="choco")

    def _addp_surviving_round(self) -> None:
        """``_addp_round``, redone on the survivors after a lost rank (dropped on a rank that
        was a step behind the others)."""
        while True:
            try:
                return self._addp_round()
            except RankLostError:
                self._addp_new_world()
                agreed = agree_after_loss(self._addp_step_count)
                if agreed > self._addp_step_count:
                    self._addp_step_count = agreed - 1  # step() counts this one
                    return None
                if size() == 1:
                    return None

    def _addp_new_world(self) -> None:
        self._addp_copies.clear()
        self.self_weight = self.src_weights = self.dst_weights = None
        self.schedule = rebuilt_schedule(self._addp_schedule_factory, self.schedule)

    def step(self, closure=None):
        loss = inner_step(self, closure)
        if size() > 1:
            self._addp_surviving_round()
        self._addp_step_count += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["asyncddp"] = {"step": self._addp_step_count}
        return state

    def load_state_dict(self, state_dict) -> None:
        """torch's own, plus the step count; the public copies start again from the loaded
        model (one dense send per edge), the same on both ends of every edge."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("asyncddp", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self._addp_step_count = int(extra["step"])
        self._addp_copies.clear()


def DistributedCompressedNeighborOptimizer(optimizer, model, compressor="topk:0.01", consensus_lr=None,
                                           schedule=None):
    """Wrap ``optimizer`` for decentralized training with compressed gossip (CHOCO-SGD).

    Args:
        optimizer: a torch optimizer over ``model``'s parameters (stays an instance of its class).
        model: the module being trained.
        compressor: ``topk:F`` (default ``topk:0.01``: 1% of the entries, 8 bytes each),
            ``randk:F``, ``int8``, ``int4``, ``sign`` or ``identity``.
        consensus_lr: γ in (0, 1], the step toward the neighbours' public copies; default by
            compressor (see ``default_consensus_lr``: 1 for identity, int8 and int4, 0.3 for
            sign, ``min(0.5, 2F)`` for ``topk:F`` (0.02 for the default), ``F/2`` for ``randk:F``).
        schedule: a dynamic topology (factory ``f(size, rank)`` or iterator of ``NeighborStep``),
            e.g. ``addp.one_peer_exponential_two``; default the static topology.
    """
    check_optimizer(optimizer, _WHO)
    check_model(model, _WHO)
    codec = parse_compressor(compressor)
    rate = default_consensus_lr(codec) if consensus_lr is None else check_rate(consensus_lr, "consensus_lr", _WHO)
    wrapped = wrap(optimizer, _CompressedNeighbor, _WHO)
    wrapped._addp_setup(model, codec, rate, schedule)
    return wrapped
