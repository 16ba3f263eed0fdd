"""Average consensus written against BlueFog's API, run through asyncddp's compatibility layer.

Every rank starts with its own random vector; neighbour averaging drives all of them to the
global mean. Three modes, as in BlueFog's example:

* synchronous (default): ``x <- neighbor_allreduce(x)`` over a static topology;
* ``--enable-dynamic-topology``: each step talks to one peer from
  ``GetDynamicOnePeerSendRecvRanks`` (or the inner/outer generator when machines are faked);
* ``--asynchronous-mode``: push-sum over one-sided windows. Each rank appends a weight 1 to its
  vector, pushes shares of ``[x, w]`` into its out-neighbours' windows with ``win_accumulate``
  and folds in whatever has arrived with ``win_update_then_collect``, never waiting for anyone;
  ``x / w`` tends to the exact mean even on a directed graph.

Only the two import lines differ from a BlueFog script (``import bluefog.torch as bf`` and
``from bluefog.common import topology_util``); with ``asyncddp.compat.install_bluefog_alias()``
or ``-m asyncddp.compat.run_bluefog`` even those can stay. Run it with::

    asyncddp run -np 4 examples/bluefog/average_consensus.py --max-iters 100
    asyncddp run -np 4 examples/bluefog/average_consensus.py --asynchronous-mode
"""

import argparse

import torch

import asyncddp.compat.bluefog as bf
from asyncddp.compat import topology_util

TOPOLOGIES = {
    "expo2": lambda n: topology_util.ExponentialGraph(n),
    "ring": lambda n: topology_util.RingGraph(n),
    "mesh": lambda n: topology_util.MeshGrid2DGraph(n),
    "star": lambda n: topology_util.StarGraph(n),
    "full": lambda n: topology_util.FullyConnectedGraph(n),
}


def parse_args():
    parser = argparse.ArgumentParser(description="average consensus with BlueFog's API")
    parser.add_argument("--data-size", type=int, default=100, help="length of each rank's vector")
    parser.add_argument("--max-iters", type=int, default=200)
    parser.add_argument("--virtual-topology", default="expo2", choices=sorted(TOPOLOGIES))
    parser.add_argument("--enable-dynamic-topology", action="store_true")
    parser.add_argument("--asynchronous-mode", action="store_true", help="push-sum over windows")
    parser.add_argument("--seed", type=int, default=2021)
    return parser.parse_args()


def synchronous(x, args):
    """Static or one-peer dynamic neighbour averaging."""
    weighted = args.virtual_topology in ("mesh", "star")
    bf.set_topology(TOPOLOGIES[args.virtual_topology](bf.size()), is_weighted=weighted)
    if not args.enable_dynamic_topology or bf.size() == 1:
        for _ in range(args.max_iters):
            x = bf.neighbor_allreduce(x, name="x")
        return x
    if bf.machine_size() > 1 and bf.local_size() > 2:
        schedule = topology_util.GetInnerOuterExpo2DynamicSendRecvRanks(bf.size(), bf.local_size(), bf.rank())
    else:
        schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())
    for _ in range(args.max_iters):
        send_ranks, recv_ranks = next(schedule)
        weight = 1.0 / (len(recv_ranks) + 1)
        x = bf.neighbor_allreduce(x, self_weight=weight, src_weights={r: weight for r in recv_ranks},
                                  dst_weights={r: 1.0 for r in send_ranks}, name="x")
    return x


def push_sum(x, args):
    """Asynchronous push-sum: the last entry carries the weight, the ratio is the estimate."""
    bf.set_topology(TOPOLOGIES[args.virtual_topology](bf.size()))
    outgoing = bf.out_neighbor_ranks()
    share = 1.0 / (len(outgoing) + 1)
    y = torch.cat([x, torch.ones(1, dtype=x.dtype)])
    bf.win_create(y, name="y", zero_init=True)
    for _ in range(args.max_iters):
        bf.win_accumulate(y, name="y", dst_weights={r: share for r in outgoing}, require_mutex=True)
        y.mul_(share)  # keep our own share: what left us is no longer ours
        bf.win_update_then_collect(name="y")
    # Everyone stops pushing, then collects what is still in flight: no mass is lost.
    bf.barrier()
    bf.win_update_then_collect(name="y")
    bf.win_free(name="y")
    return y[:-1] / y[-1]


def main():
    args = parse_args()
    bf.init()
    torch.manual_seed(args.seed + bf.rank())
    x = torch.randn(args.data_size, dtype=torch.float64)
    mean = bf.allreduce(x, average=True, name="mean")
    x = push_sum(x, args) if args.asynchronous_mode else synchronous(x, args)
    error = bf.allreduce(torch.tensor([float(torch.norm(x - mean))]), average=False, name="err")
    if bf.rank() == 0:
        mode = "push-sum" if args.asynchronous_mode else ("dynamic" if args.enable_dynamic_topology else "static")
        print(f"consensus {mode} {args.virtual_topology} ranks={bf.size()} iters={args.max_iters} "
              f"total_error={error.item():.3e}")
    bf.shutdown()


if __name__ == "__main__":
    main()
