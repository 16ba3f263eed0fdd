"""Benchmark-style training of a small ResNet on synthetic images, any optimizer by flag.

The ResNet (BasicBlocks, three stages, width ``--width``) is built here in plain torch; the data
are random 3x32x32 images with random labels, generated once per rank, so the script measures
training throughput rather than accuracy (like BlueFog's and Horovod's synthetic benchmarks).
Rank 0 prints images/second per rank and in total, and the loss of the last step.

    asyncddp run -np 4 examples/train_resnet.py --optimizer dear --steps 20
    (optimizers: neighbor, neighbor-awc, one-peer, allreduce, hierarchical, gradient, dear,
     winput, empty)
"""

import argparse
import time

import torch
import torch.nn.functional as F
from train_mnist_like import OPTIMIZERS, wrap

import asyncddp as addp

torch.set_num_threads(1)


class BasicBlock(torch.nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or channels_in != channels:
            self.shortcut = torch.nn.Sequential(
                torch.nn.Conv2d(channels_in, channels, 1, stride, bias=False),
                torch.nn.BatchNorm2d(channels),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(torch.nn.Module):
    """ResNet for 32x32 inputs: a stem, three stages of ``blocks`` BasicBlocks, a linear head."""

    def __init__(self, width: int = 16, blocks: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
        )  # fmt: skip
        layers, channels = [], width
        for stage in range(3):
            out = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(channels, out, 2 if stage and b == 0 else 1))
                channels = out
        self.layers = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="neighbor")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=1, help="BasicBlocks per stage")
    parser.add_argument("--cuda", action="store_true", help="train on this rank's GPU")
    args = parser.parse_args()
    addp.init()
    rank, n = addp.rank(), addp.size()
    device = torch.device(f"cuda:{addp.local_rank() % torch.cuda.device_count()}") if args.cuda \
        else torch.device("cpu")  # fmt: skip
    model = ResNet(args.width, args.blocks).to(device)
    addp.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = wrap(args.optimizer, torch.optim.SGD(model.parameters(), lr=0.01 * n, momentum=0.9),
                     model)  # fmt: skip
    g = torch.Generator().manual_seed(rank)
    images = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    labels = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)

    def train_step():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(2):
        train_step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = args.steps * args.batch_size / (time.perf_counter() - start)
    rates = addp.allgather(torch.tensor([rate], dtype=torch.float64))
    if hasattr(optimizer, "flush"):
        optimizer.flush()
    if hasattr(optimizer, "free"):
        optimizer.free()
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(f"{args.optimizer}: ResNet {params} parameters, {n} ranks, batch {args.batch_size}",
              flush=True)  # fmt: skip
        print(f"images/s per rank {rates.mean().item():.1f}, total {rates.sum().item():.1f}; "
              f"last loss {loss.item():.4f}", flush=True)  # fmt: skip
    addp.shutdown()


if __name__ == "__main__":
    main()
