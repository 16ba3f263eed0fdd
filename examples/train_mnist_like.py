"""Train a small CNN on synthetic MNIST-like digits with any asyncddp optimizer (no downloads).

The data: 10 classes, each a fixed random 12x12 template; a sample is its class template plus
Gaussian noise. Every rank draws its own training shard (seeded by rank) and all ranks share one
test set. Converting the training loop is the usual two lines: build the torch optimizer with the
learning rate scaled by the number of ranks, then wrap it.

    asyncddp run -np 4 examples/train_mnist_like.py --optimizer neighbor --epochs 3
    (optimizers: neighbor, neighbor-awc, one-peer, allreduce, hierarchical, gradient, dear,
     winput, empty)
"""

import argparse

import torch
import torch.nn.functional as F

import asyncddp as addp

torch.set_num_threads(1)
NUM_CLASSES, SIDE = 10, 12


def make_data(num_samples: int, seed: int):
    templates = torch.randn(NUM_CLASSES, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (num_samples,), generator=g)
    images = templates[labels] + 1.0 * torch.randn(num_samples, 1, SIDE, SIDE, generator=g)
    return images, labels


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = torch.nn.Linear(16 * 3 * 3, 32)
        self.fc2 = torch.nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def wrap(name: str, optimizer, model):
    if name in ("neighbor", "neighbor-awc"):
        return addp.DistributedNeighborAllreduceOptimizer(optimizer, model, atc=name == "neighbor")
    if name == "one-peer":
        return addp.DistributedNeighborAllreduceOptimizer(
            optimizer, model, schedule=addp.one_peer_exponential_two
        )
    if name in ("allreduce", "empty"):
        return addp.DistributedNeighborAllreduceOptimizer(optimizer, model, communication_type=name)
    if name == "hierarchical":
        return addp.DistributedHierarchicalNeighborAllreduceOptimizer(optimizer, model)
    if name == "gradient":
        return addp.DistributedGradientAllreduceOptimizer(optimizer, model)
    if name == "dear":
        return addp.DistributedDeAROptimizer(optimizer, model, num_nearby_layers=2)
    return addp.DistributedWinPutOptimizer(optimizer, model)


OPTIMIZERS = ("neighbor", "neighbor-awc", "one-peer", "allreduce", "hierarchical", "gradient",
              "dear", "winput", "empty")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="neighbor")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=512, help="training samples per rank")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02, help="per-rank lr (scaled by size)")
    args = parser.parse_args()
    addp.init()
    rank, n = addp.rank(), addp.size()
    torch.manual_seed(rank)  # different initial weights ...
    model = SmallCNN()
    addp.broadcast_parameters(model.state_dict(), root_rank=0)  # ... made identical
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * n, momentum=0.9)
    optimizer = wrap(args.optimizer, optimizer, model)
    images, labels = make_data(args.samples, seed=100 + rank)
    for epoch in range(args.epochs):
        total = 0.0
        for start in range(0, args.samples, args.batch_size):
            x, y = images[start : start + args.batch_size], labels[start : start + args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        mean_loss = addp.allreduce(torch.tensor([total / args.samples])).item()
        if rank == 0:
            print(f"epoch {epoch + 1}: mean training loss {mean_loss:.4f}", flush=True)
    if hasattr(optimizer, "flush"):
        optimizer.flush()  # DeAR applies the last update lazily
    if hasattr(optimizer, "free"):
        optimizer.free()
    addp.allreduce_parameters(model.state_dict())  # one model from the replicas
    test_x, test_y = make_data(1000, seed=999)
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    if rank == 0:
        print(f"{args.optimizer}: test accuracy {accuracy:.3f} after {args.epochs} epochs", flush=True)
    addp.shutdown()


if __name__ == "__main__":
    main()
