"""Public copies for compressed gossip (CHOCO-SGD): what each neighbour knows of a model.

Rank ``i`` never sends ``x_i`` itself, only ``q = C(x_i − x̂)``, the compressed difference
between its model and the *public copy* ``x̂`` the receiver holds of it; both ends then add the
decompressed ``q`` to their copy, so the copies stay bit-identical at the two ends of an edge,
and whatever ``C`` dropped stays in ``x_i − x̂`` to be sent later (error feedback for free).
The model then moves toward its neighbours' public copies with step ``γ``:
``x_i += γ Σ_s w_s (x̂_s − x̂_i)``.

Copies are kept per edge: ``sent[d]`` is this rank's record of what ``d`` holds of it,
``received[s]`` what it holds of ``s``. On a static topology every destination is updated in
every round, so they share one tensor (one compression per round, the same payload to all); a
dynamic schedule (one-peer Exp-2) sends to one peer at a time, and each peer's copy then
advances only when that edge is used — a shared copy is split off (copied) the first time its
destinations part ways. An edge used for the first time sends the dense model once and both
ends start from it exactly; clearing the copies (after a world change or a checkpoint load)
makes every edge start that way again. Nothing is changed until the exchange has completed, so a
round a lost rank interrupts leaves copies and model as they were.
"""

from __future__ import annotations

import torch

from asyncddp.comm.payload import exchange_payloads
from asyncddp.optim.compression import Compressor, _as

__all__ = ["PublicCopies", "round_seed"]


def round_seed(round_index: int, sender: int, group: int) -> int:
    """The seed both ends of an edge use for the sender's payload of ``group`` in a round."""
    return ((round_index * 1_000_003 + sender) * 131 + group) & 0x7FFF_FFFF_FFFF_FFFF


class PublicCopies:
    """Per-edge public copies of a list of flat tensors (see the module docstring)."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.sent: dict = {}  # dst -> [tensor per flat group] (shared by dsts updated together)
        self.received: dict = {}  # src -> [tensor per flat group]

    def clear(self) -> None:
        self.sent, self.received = {}, {}

    def _nbytes(self, flats, dense: bool) -> int:
        if dense:
            return sum(f.numel() * f.element_size() for f in flats)
        return sum(self.compressor.nbytes(f.numel(), f.dtype) for f in flats)

    def _send_groups(self, dsts) -> list:
        """``[(copy or None for a new edge, [dsts])]``; a copy shared with destinations outside
        this round is cloned (the clone is installed only after the exchange)."""
        groups, fresh = {}, []
        for d in dsts:
            copy = self.sent.get(d)
            if copy is None:
                fresh.append(d)
            else:
                groups.setdefault(id(copy), (copy, []))[1].append(d)
        out = []
        for copy, members in groups.values():
            holders = sum(1 for c in self.sent.values() if c is copy)
            out.append(([t.clone() for t in copy] if holders > len(members) else copy, members))
        if fresh:
            out.append((None, fresh))
        return out

    def _compress(self, flats, copy, seed) -> tuple[torch.Tensor, list]:
        payloads, deltas = [], []
        for k, (x, mine) in enumerate(zip(flats, copy)):
            s = round_seed(seed[0], seed[1], k)
            payload = self.compressor.compress(x.detach() - mine, s)
            payloads.append(payload)
            # The sender adds what the receiver will decode, not the exact difference.
            deltas.append(self.compressor.decompress(payload, x.numel(), x.dtype, s))
        return torch.cat(payloads), deltas

    def _decode(self, payload, flats, src, round_index, dense: bool) -> list:
        out, offset = [], 0
        for k, x in enumerate(flats):
            size = x.numel() * x.element_size() if dense else self.compressor.nbytes(x.numel(), x.dtype)
            part = payload[offset:offset + size]
            offset += size
            if dense:
                out.append(_as(part, x.dtype).clone())
            else:
                out.append(self.compressor.decompress(part, x.numel(), x.dtype, round_seed(round_index, src, k)))
        return out

    def round(self, flats, dsts, recvs, gamma: float, *, me: int, round_index: int, check: bool = False,
              name: str = "choco") -> None:
        """One gossip round: send to ``dsts``, receive from ``recvs`` (``[(src, weight)]``),
        then ``flats[k] += gamma · Σ w_s (x̂_s − x̂_self)`` in place."""
        groups = self._send_groups(dsts)
        sends, pending = {}, []
        for copy, members in groups:
            if copy is None:
                payload = torch.cat([x.detach().reshape(-1).view(torch.uint8) for x in flats])
                pending.append(([x.detach().clone() for x in flats], members, None))
            else:
                payload, deltas = self._compress(flats, copy, (round_index, me))
                pending.append((copy, members, deltas))
            for d in members:
                sends[d] = payload
        sizes = {s: self._nbytes(flats, dense=s not in self.received) for s, _ in recvs}
        got = exchange_payloads(sends, sizes, device=flats[0].device, check=check, name=name)
        # The exchange completed: from here on nothing can fail halfway.
        for copy, members, deltas in pending:
            for tensor, delta in zip(copy, deltas or ()):
                tensor.add_(delta)
            for d in members:
                self.sent[d] = copy
        for s, _ in recvs:
            decoded = self._decode(got[s], flats, s, round_index, dense=s not in self.received)
            if s in self.received:
                for tensor, delta in zip(self.received[s], decoded):
                    tensor.add_(delta)
            else:
                self.received[s] = decoded
        self._combine(flats, [copy for copy, _, _ in pending], recvs, gamma)

    def _combine(self, flats, own_copies, recvs, gamma: float) -> None:
        if not recvs:
            return
        total = sum(w for _, w in recvs)
        with torch.no_grad():
            for k, x in enumerate(flats):
                if own_copies:  # what the neighbours hold of this rank (several: their mean)
                    mine = sum(c[k] for c in own_copies) / len(own_copies)
                else:
                    mine = x.detach().clone()
                pull = sum(w * self.received[s][k] for s, w in recvs) - total * mine
                x.add_(pull, alpha=gamma)

