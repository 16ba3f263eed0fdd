"""``examples/ddp_unchanged.py`` with decentralized averaging: the same model, data and launch.

    asyncddp run -np 4 examples/ddp_to_neighbor.py
    asyncddp run --emulate nodes=4,bandwidth=1gbit examples/ddp_to_neighbor.py

Both worlds in one job: torch.distributed stays set up from torchrun's variables (here it sums the
throughput; in a real script it may run DDP or FSDP for part of the model), while the model's
parameters are averaged with neighbours by ``DistributedNeighborAllreduceOptimizer`` instead of
DDP's global allreduce. ``--init-order asyncddp-first`` calls ``asyncddp.init()`` before
``init_process_group``; either order works. Replicas are close, not identical: the last line says
how far apart they ended.
"""

import os

import torch
import torch.distributed as dist

import asyncddp as addp

from ddp_unchanged import build_model, synthetic_batch, train, training_flags


def main() -> None:
    parser = training_flags(__doc__.splitlines()[0])
    parser.add_argument("--init-order", choices=("torch-first", "asyncddp-first"), default="torch-first")
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.init_order == "torch-first":
        dist.init_process_group("gloo")
        addp.init()
    else:
        addp.init()
        dist.init_process_group("gloo")
    assert (dist.get_rank(), dist.get_world_size()) == (addp.rank(), addp.size())
    assert int(os.environ["LOCAL_RANK"]) == addp.local_rank()

    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    optimizer = addp.DistributedNeighborAllreduceOptimizer(optimizer, model=model)
    images, labels = synthetic_batch(addp.rank(), args.batch_size, args.image_size)
    loss, step_s = train(model, optimizer, images, labels, args.warmup, args.steps)
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    print(f"rank {addp.rank()} of {addp.size()} (local rank {addp.local_rank()}): loss {loss:.4f}, "
          f"{args.batch_size / step_s:.1f} img/s, {1e3 * step_s:.1f} ms/step, parameter checksum {checksum:.9f}",
          flush=True)
    rates = torch.tensor([args.batch_size / step_s])
    dist.all_reduce(rates)  # torch's world
    spread = addp.allgather(torch.tensor([checksum], dtype=torch.float64))  # asyncddp's world
    if addp.rank() == 0:
        print(f"total: {rates.item():.1f} img/s on {addp.size()} ranks; replicas' checksums within "
              f"{(spread.max() - spread.min()).item():.3g}", flush=True)
    dist.destroy_process_group()
    addp.shutdown()


if __name__ == "__main__":
    main()
