"""Dynamic topologies: per-rank schedules of one communication step after another.

Every dynamic topology in asyncddp is an infinite iterator per rank yielding ``NeighborStep``s.
For one step, all ranks at once::

    x_i <- self_weight_i * x_i + sum_{j in recv_i} src_weights_i[j] * dst_weights_j[i] * x_j

The fields are exactly the keyword arguments of ``asyncddp.neighbor_allreduce``, so
``addp.neighbor_allreduce(x, **step.as_kwargs())`` runs one step of any schedule whose steps have
no auxiliary buffer (``step.has_aux`` is False). DSGD-CECA (``asyncddp.topology.ceca``) keeps a
second buffer ``aux`` per rank; its steps say which buffer is sent (``send_buffer``) and how
``aux`` is updated from the same received value; ``NeighborStep`` documents how to drive them.

Schedules are deterministic functions of ``(n, rank, step index)`` (plus a shared seed for the
random ones), so every rank computes its own part without talking to the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import networkx as nx

from asyncddp.errors import TopologyError
from asyncddp.topology.analysis import out_neighbors, recv_weights
from asyncddp.topology.graphs import _check_rank, _check_size

__all__ = [
    "NeighborStep",
    "static_schedule",
    "one_peer_exponential_two",
    "inner_outer_exponential_two",
    "exp2_period",
]


@dataclass(frozen=True)
class NeighborStep:
    """One step of a dynamic topology, seen from one rank.

    Plain steps (``aux_self_weight is None``): ``neighbor_allreduce(x, **step.as_kwargs())``.

    Steps with an auxiliary buffer (CECA): every rank sends the buffer named by ``send_buffer``
    (``"x"`` or ``"aux"``, the same on all ranks in a step) scaled by ``dst_weights``; call
    the value received from rank j ``c_j``. Then, with the old x and aux on the right::

        x   <- self_weight     * x   + sum_j src_weights[j]     * c_j
        aux <- aux_self_weight * aux + sum_j aux_src_weights[j] * c_j

    Drive it with ONE exchange when a step receives from one rank (CECA always does)::

        c = neighbor_allreduce(x if step.send_buffer == "x" else aux, **step.exchange_kwargs())
        x, aux = step.combine(x, aux, c)

    or with two plain ``neighbor_allreduce`` calls on the sent buffer, each with self weight 0
    and src weights ``src_weights`` resp. ``aux_src_weights``, adding ``self_weight * x`` resp.
    ``aux_self_weight * aux`` afterwards.
    """

    send_ranks: tuple[int, ...]
    recv_ranks: tuple[int, ...]
    self_weight: float
    src_weights: dict[int, float] = field(default_factory=dict)
    dst_weights: dict[int, float] = field(default_factory=dict)
    # Which buffer this step sends: "x", or "aux" (only for schedules with an auxiliary buffer).
    send_buffer: str = "x"
    # None: no auxiliary buffer. Otherwise aux's self weight and the weights of received values.
    aux_self_weight: float | None = None
    aux_src_weights: dict[int, float] = field(default_factory=dict)

    @property
    def has_aux(self) -> bool:
        """True for steps of a schedule with an auxiliary buffer (CECA)."""
        return self.aux_self_weight is not None

    def as_kwargs(self) -> dict:
        """Keyword arguments for ``neighbor_allreduce``."""
        return {
            "self_weight": self.self_weight,
            "src_weights": dict(self.src_weights),
            "dst_weights": dict(self.dst_weights),
        }

    def exchange_kwargs(self) -> dict:
        """``neighbor_allreduce`` arguments that return ``sum_j c_j`` (self weight 0, src 1)."""
        return {
            "self_weight": 0.0,
            "src_weights": {j: 1.0 for j in self.recv_ranks},
            "dst_weights": dict(self.dst_weights),
        }

    def combine(self, x, aux, received):
        """New ``(x, aux)`` from the old ones and ``received`` (the exchange_kwargs result).

        Only defined for steps receiving from at most one rank, where ``received`` is ``c_j``.
        """
        if len(self.recv_ranks) > 1:
            raise TopologyError("NeighborStep.combine needs a step receiving from one rank at most")
        (src,) = self.recv_ranks or (None,)
        new_x = self.self_weight * x
        new_aux = aux if self.aux_self_weight is None else self.aux_self_weight * aux
        if src is not None:
            new_x = new_x + self.src_weights[src] * received
            if self.aux_self_weight is not None:
                new_aux = new_aux + self.aux_src_weights[src] * received
        return new_x, new_aux

    def to_dict(self) -> dict:
        out = {
            "send_ranks": list(self.send_ranks),
            "recv_ranks": list(self.recv_ranks),
            "self_weight": self.self_weight,
            "src_weights": {str(k): v for k, v in self.src_weights.items()},
            "dst_weights": {str(k): v for k, v in self.dst_weights.items()},
        }
        if self.has_aux:
            out["send_buffer"] = self.send_buffer
            out["aux_self_weight"] = self.aux_self_weight
            out["aux_src_weights"] = {str(k): v for k, v in self.aux_src_weights.items()}
        return out


def _idle() -> NeighborStep:
    return NeighborStep((), (), 1.0, {}, {})


def _pair_step(send: int, recv: int) -> NeighborStep:
    """Send to one rank and average half/half with the one received."""
    return NeighborStep((send,), (recv,), 0.5, {recv: 0.5}, {send: 1.0})


def exp2_period(n: int) -> int:
    """``ceil(log2(n))``: the number of distinct one-peer Exp-2 offsets (0 for n = 1)."""
    _check_size(n)
    return (n - 1).bit_length()


def static_schedule(graph: nx.DiGraph, rank: int) -> Iterator[NeighborStep]:
    """A static graph as a schedule: the same step forever (send to all out-neighbours)."""
    n = graph.number_of_nodes()
    _check_rank(n, rank, "static_schedule")
    weight, src_weights = recv_weights(graph, rank)
    send = tuple(out_neighbors(graph, rank))
    step = NeighborStep(send, tuple(src_weights), weight, src_weights, {k: 1.0 for k in send})
    return itertools.repeat(step)


def one_peer_exponential_two(n: int, rank: int) -> Iterator[NeighborStep]:
    """One-peer Exp-2: at step k send to ``rank + 2**(k mod tau)``, receive from
    ``rank - 2**(k mod tau)``, weights 1/2 and 1/2 (``tau = ceil(log2 n)``).

    Each step's matrix is ``(I + P^(2^k))/2``; for n a power of two any tau consecutive steps
    multiply to exactly ``11^T/n``. Other n are not exact (see ``ceca_schedule`` for that).
    """
    _check_size(n)
    _check_rank(n, rank, "one_peer_exponential_two")
    tau = exp2_period(n)
    if tau == 0:
        return itertools.repeat(_idle())
    steps = [_pair_step((rank + 2**k) % n, (rank - 2**k) % n) for k in range(tau)]
    return itertools.cycle(steps)


def _inner_outer_step(n: int, local_size: int, rank: int, index: int) -> NeighborStep:
    num_machines = n // local_size
    machine, local = divmod(rank, local_size)
    outside = index % local_size
    if local == outside:
        if num_machines == 1:
            return _idle()
        dist = 2 ** (index % exp2_period(num_machines))
        return _pair_step(
            ((machine + dist) % num_machines) * local_size + local,
            ((machine - dist) % num_machines) * local_size + local,
        )
    # The other local ranks run one-peer Exp-2 on a ring of local_size - 1 nodes that starts
    # right after the outside rank and skips it.
    inner = local_size - 1
    dist = 2 ** (index % exp2_period(inner))
    position = (local - outside) % local_size - 1
    send_local = (outside + 1 + (position + dist) % inner) % local_size
    recv_local = (outside + 1 + (position - dist) % inner) % local_size
    return _pair_step(machine * local_size + send_local, machine * local_size + recv_local)


def inner_outer_exponential_two(n: int, local_size: int, rank: int) -> Iterator[NeighborStep]:
    """BlueFog's inner/outer one-peer Exp-2 for machines of ``local_size`` consecutive ranks.

    At step t the local rank ``t mod local_size`` of every machine exchanges with the same
    local rank on machine ``m ± 2**(t mod ceil(log2 M))`` (M machines); the other local ranks
    run one-peer Exp-2 among themselves on the ring that skips it (distance
    ``2**(t mod ceil(log2(local_size - 1)))``). Weights 1/2 and 1/2; the outside rank of a
    single machine keeps its value. ``local_size`` must be 1 or more than 2. Same send/receive ranks as
    BlueFog's ``GetInnerOuterExpo2DynamicSendRecvRanks`` for ``local_size > 2``.
    """
    _check_size(n)
    _check_rank(n, rank, "inner_outer_exponential_two")
    if not isinstance(local_size, int) or local_size < 1 or n % local_size:
        raise TopologyError(
            f"inner_outer_exponential_two: local_size {local_size!r} must be a positive divisor "
            f"of n={n} (machines of equal size)"
        )
    if local_size == 2:
        # The lone inner rank has nobody to talk to and the two local ranks never meet: the
        # ranks would split into two groups that never agree (BlueFog refuses this case too).
        raise TopologyError(
            "inner_outer_exponential_two needs local_size 1 or > 2 (with 2 ranks per machine "
            "they never average with each other); use one_peer_exponential_two instead"
        )
    return (_inner_outer_step(n, local_size, rank, t) for t in itertools.count())
