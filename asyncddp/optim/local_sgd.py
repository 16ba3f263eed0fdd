"""Local SGD and DiLoCo: ``H`` local steps, then one outer step on the averaged models.

``DistributedLocalSGDOptimizer`` runs the user's optimizer (the *inner* one) alone for
``sync_every`` steps; the ``H``-th ``step()`` then averages the models by ``communication`` and
takes an *outer* step from the last synchronised point ``x_outer`` along the pseudo-gradient
``Δ = x_outer − avg(x)``: ``m = μ m + Δ``; ``x_outer −= lr_out · (Δ + μ m if nesterov else m)``;
every parameter restarts from the new ``x_outer``. With ``outer_lr=1, outer_momentum=0`` the
outer step lands on the average itself: Local SGD (with ``sync_every=1``, adapt-then-combine
averaging). ``outer_lr=0.7, outer_momentum=0.9, nesterov=True`` is DiLoCo (Douillard et al., 2023).

``communication`` picks the average: ``allreduce`` (every rank, replicas identical — DiLoCo),
``neighbor`` (one gossip step on the topology) or ``one-peer`` (a one-peer Exp-2 step: one
model sent per round, whatever the world size). Gossip averages the models, not the
pseudo-gradients: each rank's ``x_outer`` is its own, and averaging ``Δ`` alone would never mix
differing outer points. A ``compressor`` compresses what is sent: for ``allreduce`` the
pseudo-gradient, with a residual carried to the next round (error feedback); for gossip the
difference between the model and the public copy the neighbours hold (CHOCO with ``γ = 1``,
whose copies are the error feedback; between rounds that difference is the pseudo-gradient).

Fault tolerance: nothing changes until a round's exchange has completed, so after a lost rank
``step()`` agrees with the survivors on the step and redoes the round on the new world; a rank
that was a round behind takes that round's outer step on its own model instead. ``state_dict()``
holds the outer state (``x_outer``, momentum, residual, step) for ``save_checkpoint``.
"""

from __future__ import annotations

import torch

from asyncddp.comm.collectives import allreduce_
from asyncddp.comm.context import rank, size
from asyncddp.comm.neighbor import neighbor_allreduce_
from asyncddp.comm.payload import exchange_payloads
from asyncddp.errors import OptimizerError, RankLostError
from asyncddp.optim.base import DistributedOptimizer, check_model, check_optimizer, flatten_parameters, inner_step, \
    named_trainable, wrap
from asyncddp.optim.choco import rebuilt_schedule
from asyncddp.optim.compression import parse_compressor
from asyncddp.optim.neighbor import _as_schedule, _still_views
from asyncddp.optim.public_copies import PublicCopies, round_seed
from asyncddp.optim.rounds import next_round
from asyncddp.optim.survival import agree_after_loss

__all__ = ["DistributedLocalSGDOptimizer", "OUTER_COMMUNICATION"]

_WHO = "DistributedLocalSGDOptimizer"
OUTER_COMMUNICATION = ("neighbor", "one-peer", "allreduce")


class _LocalSGD(DistributedOptimizer):
    """Mixin: see the module docstring."""

    def _addp_setup(self, model, sync_every, outer_lr, outer_momentum, nesterov, communication, compressor,
                    gossip_rounds=1):
        from asyncddp.topology.schedules import one_peer_exponential_two

        self._addp_named = named_trainable(model, self)
        self.sync_every, self.outer_lr, self.outer_momentum = sync_every, outer_lr, outer_momentum
        self.nesterov, self.communication, self.compressor = nesterov, communication, compressor
        self.gossip_rounds = gossip_rounds
        self._addp_schedule_factory = one_peer_exponential_two if communication == "one-peer" else None
        self.schedule = _as_schedule(self._addp_schedule_factory)
        self._addp_step_count = 0
        self._addp_flat = flatten_parameters(p for _, p in self._addp_named)
        flats = [flat for flat, _ in self._addp_flat]
        self._addp_outer = [flat.detach().clone() for flat in flats]
        self._addp_momentum = [torch.zeros_like(flat) for flat in flats]
        self._addp_residual = [torch.zeros_like(flat) for flat in flats]
        self._addp_copies = PublicCopies(compressor) if compressor is not None else None

    def _addp_flats(self) -> list:
        if any(not _still_views(flat, params) for flat, params in self._addp_flat):
            self._addp_flat = flatten_parameters(p for _, p in self._addp_named)
        return [flat for flat, _ in self._addp_flat]

    # -- the average of one outer round (new tensors; the parameters are not touched) --
    def _addp_average(self, flats) -> list:
        if self.communication == "allreduce":
            if self.compressor is None:
                return [allreduce_(flat.detach().clone(), average=True, name=f"localsgd.flat{k}")
                        for k, flat in enumerate(flats)]
            return self._addp_compressed_allreduce(flats)
        averaged = [flat.detach().clone() for flat in flats]
        for r in range(self.gossip_rounds):
            self._addp_gossip_round(averaged, self._addp_step_count * self.gossip_rounds + r)
        return averaged

    def _addp_gossip_round(self, averaged, round_index) -> None:
        peers = next_round(self.schedule, None, None, None, True, _WHO)
        if self._addp_copies is not None:
            self._addp_copies.round(averaged, peers.dsts, peers.recvs, 1.0, me=rank(),
                                    round_index=round_index, check=peers.check, name="localsgd")
            return
        kw = {}
        if self.schedule is not None:
            kw = {"self_weight": 1.0 - sum(w for _, w in peers.recvs), "src_weights": dict(peers.recvs),
                  "dst_weights": {d: 1.0 for d in peers.dsts}}
        for k, tensor in enumerate(averaged):
            neighbor_allreduce_(tensor, name=f"localsgd.flat{k}", **kw)

    def _addp_compressed_allreduce(self, flats) -> list:
        """Every rank's compressed pseudo-gradient to every other; the mean of the decoded ones
        (this rank's own decoded too, so every rank computes the same mean)."""
        me, n = rank(), size()
        codec = self.compressor
        payloads, mine = [], []
        for k, (flat, outer, residual) in enumerate(zip(flats, self._addp_outer, self._addp_residual)):
            seed = round_seed(self._addp_step_count, me, k)
            target = outer - flat.detach() + residual
            payloads.append(codec.compress(target, seed))
            mine.append((target, codec.decompress(payloads[-1], flat.numel(), flat.dtype, seed)))
        payload = torch.cat(payloads)
        others = [r for r in range(n) if r != me]
        got = exchange_payloads({r: payload for r in others}, {r: payload.numel() for r in others},
                                device=flats[0].device, name="localsgd.compressed")
        got[me] = payload
        averaged = []
        for k, flat in enumerate(flats):
            total = torch.zeros_like(flat)
            offset = sum(codec.nbytes(f.numel(), f.dtype) for f in flats[:k])
            size_k = codec.nbytes(flat.numel(), flat.dtype)
            for r in range(n):  # the same order on every rank: the same rounding everywhere
                part = got[r][offset:offset + size_k]
                total += codec.decompress(part, flat.numel(), flat.dtype, round_seed(self._addp_step_count, r, k))
            averaged.append(self._addp_outer[k] - total / n)
        for residual, (target, decoded) in zip(self._addp_residual, mine):
            residual.copy_(target - decoded)
        return averaged

    # -- the outer step --
    def _addp_outer_step(self, flats, averaged) -> None:
        with torch.no_grad():
            for flat, outer, momentum, avg in zip(flats, self._addp_outer, self._addp_momentum, averaged):
                if self.outer_lr == 1.0 and self.outer_momentum == 0.0:
                    outer.copy_(avg)  # Local SGD: exactly the average
                else:
                    delta = outer - avg
                    if self.outer_momentum:
                        momentum.mul_(self.outer_momentum).add_(delta)
                        delta = delta + self.outer_momentum * momentum if self.nesterov else momentum
                    outer.sub_(delta, alpha=self.outer_lr)
                flat.copy_(outer)

    def _addp_surviving_round(self) -> None:
        while True:
            flats = self._addp_flats()
            try:
                averaged = self._addp_average(flats) if size() > 1 else [f.detach().clone() for f in flats]
            except RankLostError:
                self._addp_new_world()
                agreed = agree_after_loss(self._addp_step_count)
                if agreed <= self._addp_step_count:
                    continue  # redo the round on the survivors
                self._addp_step_count = agreed - 1  # a round behind: this round on its own
                averaged = [f.detach().clone() for f in flats]
            return self._addp_outer_step(flats, averaged)

    def _addp_new_world(self) -> None:
        if self._addp_copies is not None:
            self._addp_copies.clear()
        self.schedule = rebuilt_schedule(self._addp_schedule_factory, self.schedule)

    def step(self, closure=None):
        loss = inner_step(self, closure)
        if (self._addp_step_count + 1) % self.sync_every == 0:
            self._addp_surviving_round()
        self._addp_step_count += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["asyncddp"] = {"step": self._addp_step_count, "outer": [t.clone() for t in self._addp_outer],
                             "momentum": [t.clone() for t in self._addp_momentum],
                             "residual": [t.clone() for t in self._addp_residual]}
        return state

    def load_state_dict(self, state_dict) -> None:
        """torch's own, plus the outer state; public copies start again from the loaded model."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("asyncddp", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self._addp_step_count = int(extra["step"])
            for name in ("outer", "momentum", "residual"):
                mine = getattr(self, f"_addp_{name}")
                if len(extra[name]) != len(mine) or any(a.shape != b.shape for a, b in zip(extra[name], mine)):
                    raise OptimizerError(f"{_WHO}.load_state_dict: the saved outer state does not fit this "
                                         "model's parameters; load a checkpoint of the same model")
                for target, saved in zip(mine, extra[name]):
                    target.copy_(saved)
        if self._addp_copies is not None:
            self._addp_copies.clear()


def _check_options(sync_every, outer_lr, outer_momentum, communication) -> None:
    if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
        raise OptimizerError(f"{_WHO}: sync_every must be an integer >= 1 (local steps per outer step), "
                             f"got {sync_every!r}")
    if isinstance(outer_lr, bool) or not isinstance(outer_lr, (int, float)) or not outer_lr > 0:
        raise OptimizerError(f"{_WHO}: outer_lr must be a positive number, got {outer_lr!r}")
    if isinstance(outer_momentum, bool) or not isinstance(outer_momentum, (int, float)) \
            or not 0 <= outer_momentum < 1:
        raise OptimizerError(f"{_WHO}: outer_momentum must be a number in [0, 1), got {outer_momentum!r}")
    if communication not in OUTER_COMMUNICATION:
        raise OptimizerError(f"{_WHO}: communication={communication!r} is not one of "
                             f"{', '.join(OUTER_COMMUNICATION)}")


def DistributedLocalSGDOptimizer(optimizer, model, sync_every=32, outer_lr=1.0, outer_momentum=0.0,
                                 nesterov=False, communication="neighbor", compressor=None, gossip_rounds=1):
    """Wrap ``optimizer`` for Local SGD / DiLoCo: ``sync_every`` local steps, then an outer step.

    Args:
        optimizer: the inner torch optimizer over ``model``'s parameters (stays an instance of
            its class).
        model: the module being trained.
        sync_every: local steps per outer step (H; default 32).
        outer_lr, outer_momentum, nesterov: the outer SGD on the pseudo-gradient; the defaults
            (1.0, 0.0, False) are plain Local SGD, (0.7, 0.9, True) is DiLoCo.
        communication: ``neighbor`` (default: one gossip step on the topology), ``one-peer``
            (one peer per round on a one-peer Exp-2 schedule) or ``allreduce``.
        compressor: None (default: dense), or a spec as for
            ``DistributedCompressedNeighborOptimizer`` (``int8``, ``int4``, ``topk:F``, ...).
        gossip_rounds: gossip rounds per outer step for ``neighbor`` and ``one-peer`` (default
            1); each sends one model (or payload) more. ``one-peer`` with ``log2(size)`` rounds
            averages exactly on a power-of-two world (every rank's model reaches every rank).
    """
    check_optimizer(optimizer, _WHO)
    check_model(model, _WHO)
    _check_options(sync_every, outer_lr, outer_momentum, communication)
    if isinstance(gossip_rounds, bool) or not isinstance(gossip_rounds, int) or gossip_rounds < 1:
        raise OptimizerError(f"{_WHO}: gossip_rounds must be an integer >= 1 (gossip rounds per outer step), "
                             f"got {gossip_rounds!r}")
    codec = parse_compressor(compressor) if compressor is not None else None
    wrapped = wrap(optimizer, _LocalSGD, _WHO)
    wrapped._addp_setup(model, sync_every, float(outer_lr), float(outer_momentum), bool(nesterov),
                        communication, codec, gossip_rounds)
    return wrapped
