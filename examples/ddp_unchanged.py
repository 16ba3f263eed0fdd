"""A plain torch.distributed DDP script, written for torchrun: it does not import asyncddp.

    torchrun --nproc-per-node 2 examples/ddp_unchanged.py
    asyncddp run -np 2 examples/ddp_unchanged.py
    asyncddp run --hostfile hosts.txt examples/ddp_unchanged.py
    asyncddp run --emulate nodes=4,bandwidth=1gbit examples/ddp_unchanged.py

``init_process_group`` finds its rank, world size and rendezvous address in torchrun's variables
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), which ``asyncddp run`` sets on every
rank. The model and data are those of ``asyncddp bench mlp`` (synthetic 224 px images, batch 32 per
rank, an MLP over 8x8-pooled pixels, SGD with momentum), so the throughput printed here compares with
that benchmark's ``ddp`` row on the same cluster. ``examples/ddp_to_neighbor.py`` is the same training
with decentralized neighbour averaging instead of DDP's allreduce.
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def build_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights everywhere (DDP would broadcast rank 0's anyway)
    return nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 8 * 8, 1024), nn.ReLU(),
                         nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1000))


def synthetic_batch(rank: int, batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1 + rank)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    return images, torch.randint(0, 1000, (batch_size,), generator=generator)


def train(model, optimizer, images, labels, warmup: int, steps: int) -> tuple[float, float]:
    """(last loss, mean seconds per timed step) after ``warmup`` untimed steps."""
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    return loss.item(), (time.perf_counter() - start) / steps


def training_flags(description: str) -> argparse.ArgumentParser:
    """The flags of this script, which the neighbour-averaging twin (ddp_to_neighbor.py) shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32, help="images per rank per step")
    parser.add_argument("--image-size", type=int, default=224)
    return parser


def main() -> None:
    args = training_flags(__doc__.splitlines()[0]).parse_args()

    torch.set_num_threads(1)  # one core per rank, as asyncddp bench runs its ranks
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    model = DistributedDataParallel(build_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, labels = synthetic_batch(rank, args.batch_size, args.image_size)
    loss, step_s = train(model, optimizer, images, labels, args.warmup, args.steps)
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    print(f"rank {rank} of {world_size} (local rank {local_rank}): loss {loss:.4f}, "
          f"{args.batch_size / step_s:.1f} img/s, {1e3 * step_s:.1f} ms/step, parameter checksum {checksum:.9f}",
          flush=True)
    rates = torch.tensor([args.batch_size / step_s])
    dist.all_reduce(rates)
    if rank == 0:
        print(f"total: {rates.item():.1f} img/s on {world_size} ranks", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
