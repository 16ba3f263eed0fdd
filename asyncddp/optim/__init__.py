"""Distributed optimizers (wrappers of a torch optimizer) and replica-agreement helpers."""

from asyncddp.optim.base import DistributedOptimizer
from asyncddp.optim.choco import DistributedCompressedNeighborOptimizer
from asyncddp.optim.dear import DistributedDeAROptimizer
from asyncddp.optim.gradient import DistributedGradientAllreduceOptimizer
from asyncddp.optim.local_sgd import DistributedLocalSGDOptimizer
from asyncddp.optim.neighbor import (
    COMMUNICATION_TYPES,
    DistributedAllreduceOptimizer,
    DistributedHierarchicalNeighborAllreduceOptimizer,
    DistributedNeighborAllreduceOptimizer,
)
from asyncddp.optim.parameters import (
    allreduce_parameters,
    broadcast_optimizer_state,
    broadcast_parameters,
)
from asyncddp.optim.winput import DistributedWinPutOptimizer

__all__ = [
    "COMMUNICATION_TYPES",
    "DistributedAllreduceOptimizer",
    "DistributedCompressedNeighborOptimizer",
    "DistributedDeAROptimizer",
    "DistributedGradientAllreduceOptimizer",
    "DistributedOptimizer",
    "DistributedHierarchicalNeighborAllreduceOptimizer",
    "DistributedLocalSGDOptimizer",
    "DistributedNeighborAllreduceOptimizer",
    "DistributedWinPutOptimizer",
    "allreduce_parameters",
    "broadcast_optimizer_state",
    "broadcast_parameters",
]
