"""Average consensus: every rank converges to the global mean by repeated neighbour averaging.

Each rank starts from its own random vector x_r; one step is ``x <- neighbor_allreduce(x)``,
over any topology of ``asyncddp topology list``: a static graph (default ``exp2``) or a dynamic
schedule such as ``one-peer-exp2`` where each step talks to a single peer. Rank 0 prints the
worst relative distance to the exact mean after every step.

    asyncddp run -np 4 examples/average_consensus.py --topology exp2 --steps 20
    asyncddp run -np 4 examples/average_consensus.py --topology one-peer-exp2 --steps 10
"""

import argparse

import torch

import asyncddp as addp

from asyncddp.topology.registry import build_graph, get_topology, schedule_factory

torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="exp2", help="a name from `asyncddp topology list`")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dim", type=int, default=1000)
    args = parser.parse_args()
    addp.init()
    rank, n = addp.rank(), addp.size()
    schedule = None
    if get_topology(args.topology).kind == "static":
        addp.set_topology(build_graph(args.topology, n))
    else:
        schedule = schedule_factory(args.topology)(n, rank=rank)
    x = torch.randn(args.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))
    mean = addp.allreduce(x)
    for step in range(args.steps):
        if schedule is None:
            x = addp.neighbor_allreduce(x)
        else:
            step_ = next(schedule)
            if step_.has_aux:
                raise SystemExit(f"{args.topology} keeps an auxiliary buffer; see NeighborStep")
            x = addp.neighbor_allreduce(x, **step_.as_kwargs())
        error = torch.tensor([float((x - mean).norm() / mean.norm())], dtype=torch.float64)
        worst = addp.allreduce(error, op="max").item()
        if rank == 0:
            print(f"step {step + 1:3d}  max relative error {worst:.3e}", flush=True)
    addp.shutdown()


if __name__ == "__main__":
    main()
