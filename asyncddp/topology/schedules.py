"""Dynamic topologies: per-rank schedules of one communication step after another.

Every dynamic topology in asyncddp is an infinite iterator per rank yielding ``NeighborStep``s.
For one step, all ranks at once::

    x_i <- self_weight_i * x_i + sum_{j in recv_i} src_weights_i[j] * dst_weights_j[i] * x_j

The fields are exactly the keyword arguments of ``asyncddp.neighbor_allreduce``, so
``addp.neighbor_allreduce(x, **step.as_kwargs())`` runs one step of any schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NeighborStep"]


@dataclass(frozen=True)
class NeighborStep:
    """One step of a dynamic topology, seen from one rank."""

    send_ranks: tuple[int, ...]
    recv_ranks: tuple[int, ...]
    self_weight: float
    src_weights: dict[int, float] = field(default_factory=dict)
    dst_weights: dict[int, float] = field(default_factory=dict)

    def as_kwargs(self) -> dict:
        """Keyword arguments for ``neighbor_allreduce``."""
        return {
            "self_weight": self.self_weight,
            "src_weights": dict(self.src_weights),
            "dst_weights": dict(self.dst_weights),
        }
