"""BlueFog 0.3's public API exists in the alias with BlueFog's parameter names and defaults.

The tables are BlueFog 0.3's signatures (``bluefog.torch``'s exported names, and every public
function of ``bluefog.common.topology_util``), written as ``inspect`` prints parameters. A BlueFog
program that calls any of them by position or keyword, or leans on a default, runs unchanged.
"""

from __future__ import annotations

import enum
import inspect
import subprocess
import sys

import pytest

from tests.mpi_helpers import ROOT

# name -> its parameters; None: a class (checked by its members below)
TORCH = {
    "CommunicationType": None,
    "DistributedAdaptThenCombineOptimizer": "optimizer, model, communication_type=CommunicationType.neighbor_allreduce, num_steps_per_communication=1",
    "DistributedAdaptWithCombineOptimizer": "optimizer, model, communication_type=CommunicationType.neighbor_allreduce, num_steps_per_communication=1",
    "DistributedGradientAllreduceOptimizer": "optimizer, model, num_steps_per_communication=1",
    "DistributedWinPutOptimizer": "optimizer, model, num_steps_per_communication=1, window_prefix=None",
    "DistributedAllreduceOptimizer": "optimizer, model, num_steps_per_communication=1",
    "DistributedNeighborAllreduceOptimizer": "optimizer, model, num_steps_per_communication=1",
    "DistributedHierarchicalNeighborAllreduceOptimizer": "optimizer, model, num_steps_per_communication=1",
    "init": "topology_fn=None, is_weighted=False",
    "shutdown": "",
    "size": "",
    "local_size": "",
    "rank": "",
    "local_rank": "",
    "machine_size": "",
    "machine_rank": "",
    "load_topology": "",
    "set_topology": "topology=None, is_weighted=False",
    "load_machine_topology": "",
    "set_machine_topology": "topology, is_weighted=False",
    "in_neighbor_ranks": "",
    "out_neighbor_ranks": "",
    "in_neighbor_machine_ranks": "",
    "out_neighbor_machine_ranks": "",
    "mpi_threads_supported": "",
    "unified_mpi_window_model_supported": "",
    "nccl_built": "",
    "is_homogeneous": "",
    "suspend": "",
    "resume": "",
    "allreduce": "tensor, average=True, is_hierarchical_local=False, name=None",
    "allreduce_nonblocking": "tensor, average=True, is_hierarchical_local=False, name=None",
    "allreduce_": "tensor, average=True, is_hierarchical_local=False, name=None",
    "allreduce_nonblocking_": "tensor, average=True, is_hierarchical_local=False, name=None",
    "allgather": "tensor, name=None",
    "allgather_nonblocking": "tensor, name=None",
    "broadcast": "tensor, root_rank, name=None",
    "broadcast_nonblocking": "tensor, root_rank, name=None",
    "broadcast_": "tensor, root_rank, name=None",
    "broadcast_nonblocking_": "tensor, root_rank, name=None",
    "neighbor_allgather": "tensor, *, src_ranks=None, dst_ranks=None, enable_topo_check=True, name=None",
    "neighbor_allgather_nonblocking": "tensor, *, src_ranks=None, dst_ranks=None, enable_topo_check=True, name=None",
    "neighbor_allreduce": "tensor, *, self_weight=None, src_weights=None, dst_weights=None, enable_topo_check=True, name=None",
    "neighbor_allreduce_nonblocking": "tensor, *, self_weight=None, src_weights=None, dst_weights=None, enable_topo_check=True, name=None",
    "hierarchical_neighbor_allreduce": "tensor, *, self_weight=None, src_machine_weights=None, dst_machine_weights=None, enable_topo_check=False, name=None",
    "hierarchical_neighbor_allreduce_nonblocking": "tensor, *, self_weight=None, src_machine_weights=None, dst_machine_weights=None, enable_topo_check=False, name=None",
    "poll": "handle",
    "synchronize": "handle",
    "wait": "handle",
    "barrier": "",
    "win_create": "tensor, name, zero_init=False",
    "win_free": "name=None",
    "win_update": "name, self_weight=None, neighbor_weights=None, reset=False, clone=False, require_mutex=False",
    "win_update_then_collect": "name, require_mutex=True",
    "neighbor_win_put_nonblocking": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "neighbor_win_put": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "neighbor_win_get_nonblocking": "name, src_weights=None, require_mutex=False",
    "neighbor_win_get": "name, src_weights=None, require_mutex=False",
    "neighbor_win_accumulate_nonblocking": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "neighbor_win_accumulate": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "win_put_nonblocking": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "win_put": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "win_get_nonblocking": "name, src_weights=None, require_mutex=False",
    "win_get": "name, src_weights=None, require_mutex=False",
    "win_accumulate_nonblocking": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "win_accumulate": "tensor, name, self_weight=None, dst_weights=None, require_mutex=False",
    "win_wait": "handle",
    "win_poll": "handle",
    "win_mutex": "name, for_self=False, ranks=None",
    "get_win_version": "name",
    "get_current_created_window_names": "",
    "win_associated_p": "name",
    "turn_on_win_ops_with_associated_p": "",
    "turn_off_win_ops_with_associated_p": "",
    "set_skip_negotiate_stage": "value",
    "get_skip_negotiate_stage": "",
    "timeline_start_activity": "tensor_name, activity_name",
    "timeline_end_activity": "tensor_name",
    "timeline_context": "tensor_name, activity_name",
    "broadcast_optimizer_state": "optimizer, root_rank",
    "broadcast_parameters": "params, root_rank",
    "allreduce_parameters": "params",
    "GetRecvWeights": "topo, rank",
    "GetSendWeights": "topo, rank",
    "IsRegularGraph": "topo",
    "IsTopologyEquivalent": "topo1, topo2",
    "ExponentialTwoGraph": "size",
    "ExponentialGraph": "size, base=2",
    "FullyConnectedGraph": "size",
    "MeshGrid2DGraph": "size, shape=None",
    "RingGraph": "size, connect_style=0",
    "StarGraph": "size, center_rank=0",
    "SymmetricExponentialGraph": "size, base=4",
    "GetDynamicOnePeerSendRecvRanks": "topo, self_rank",
    "GetExp2DynamicSendRecvMachineRanks": "world_size, local_size, self_rank, local_rank",
    "GetInnerOuterRingDynamicSendRecvRanks": "world_size, local_size, self_rank",
    "GetInnerOuterExpo2DynamicSendRecvRanks": "world_size, local_size, self_rank",
    "InferSourceFromDestinationRanks": "dst_ranks, construct_adjacency_matrix=False",
    "InferDestinationFromSourceRanks": "src_ranks, construct_adjacency_matrix=False",
}
TOPOLOGY_UTIL = {
    "IsTopologyEquivalent": "topo1, topo2",
    "GetRecvWeights": "topo, rank",
    "GetSendWeights": "topo, rank",
    "ExponentialTwoGraph": "size",
    "isPowerOf": "x, base",
    "ExponentialGraph": "size, base=2",
    "SymmetricExponentialGraph": "size, base=4",
    "MeshGrid2DGraph": "size, shape=None",
    "StarGraph": "size, center_rank=0",
    "RingGraph": "size, connect_style=0",
    "FullyConnectedGraph": "size",
    "IsRegularGraph": "topo",
    "GetDynamicOnePeerSendRecvRanks": "topo, self_rank",
    "GetExp2DynamicSendRecvMachineRanks": "world_size, local_size, self_rank, local_rank",
    "GetInnerOuterRingDynamicSendRecvRanks": "world_size, local_size, self_rank",
    "GetInnerOuterExpo2DynamicSendRecvRanks": "world_size, local_size, self_rank",
}


def _signature(fn) -> str:
    """Parameters as BlueFog's source writes them: names, ``*`` before keyword-only ones,
    defaults by repr (an enum member by its qualified name)."""
    parts, starred = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and not starred:
            parts.append("*")
            starred = True
        if p.default is inspect.Parameter.empty:
            parts.append(p.name)
        elif isinstance(p.default, enum.Enum):
            parts.append(f"{p.name}={type(p.default).__name__}.{p.default.name}")
        else:
            parts.append(f"{p.name}={p.default!r}")
    return ", ".join(parts)


@pytest.fixture(scope="module")
def alias():
    import asyncddp.compat

    asyncddp.compat.install_bluefog_alias()
    import bluefog.torch as bf
    from bluefog.common import topology_util

    return bf, topology_util


@pytest.mark.parametrize("name", sorted(TORCH))
def test_bluefog_torch_name(alias, name):
    bf, _ = alias
    assert hasattr(bf, name), f"bluefog.torch.{name} is missing"
    if TORCH[name] is not None:
        assert _signature(getattr(bf, name)) == TORCH[name]


@pytest.mark.parametrize("name", sorted(TOPOLOGY_UTIL))
def test_topology_util_name(alias, name):
    _, topology_util = alias
    assert hasattr(topology_util, name), f"bluefog.common.topology_util.{name} is missing"
    assert _signature(getattr(topology_util, name)) == TOPOLOGY_UTIL[name]


def test_communication_type_members_and_values(alias):
    bf, _ = alias
    assert {m.name: m.value for m in bf.CommunicationType} == {
        "neighbor_allreduce": "neighbor.allreduce",
        "hierarchical_neighbor_allreduce": "hierarchical.neighbor.allreduce",
        "allreduce": "allreduce",
        "empty": "empty",
    }


def test_topology_names_import_from_bluefog_torch():
    # The lecture's first lines: bf.ExponentialTwoGraph(bf.size()), and from-imports of the
    # topology helpers out of bluefog.torch, in a fresh interpreter (no MPI needed for them).
    code = (
        "import asyncddp.compat; asyncddp.compat.install_bluefog_alias()\n"
        "import bluefog.torch as bf\n"
        "from bluefog.torch import ExponentialGraph, RingGraph, GetRecvWeights, InferSourceFromDestinationRanks\n"
        "from bluefog.common import topology_util\n"
        "assert bf.ExponentialTwoGraph is topology_util.ExponentialTwoGraph\n"
        "g = bf.ExponentialTwoGraph(8)\n"
        "print(sorted(g.successors(0)), GetRecvWeights(RingGraph(4), 0))\n"
        "print([topology_util.isPowerOf(x, 2) for x in (1, 2, 6, 8, 1024, 1023)])\n"
        "import networkx as nx\n"
        "print(nx.to_numpy_matrix(RingGraph(3)).shape, type(nx.to_numpy_matrix(RingGraph(3))).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    third = 1 / 3
    assert done.stdout.splitlines() == [
        f"[0, 1, 2, 4] ({third!r}, {{1: {third!r}, 3: {third!r}}})",
        "[True, True, False, True, True, False]",
        "(3, 3) matrix",
    ]


def test_is_power_of_refuses_bad_input(alias):
    _, topology_util = alias
    with pytest.raises(ValueError, match="base must be an integer > 1, got 1"):
        topology_util.isPowerOf(4, 1)
    with pytest.raises(ValueError, match="x must be positive, got 0"):
        topology_util.isPowerOf(0, 2)
