"""Asynchronous training with the win-put optimizer: ranks of different speeds never wait.

Rank r uses batch size ``16 * (r + 1)`` and sleeps ``r * --delay-ms`` per step, imitating a
heterogeneous cluster. Every rank trains for the same wall time; after each local step it puts
its parameters into its out-neighbours' windows and averages in whatever they last put there
(``DistributedWinPutOptimizer``). Fast ranks take many more steps than slow ones, yet the
replicas stay close and the averaged model classifies the shared test set well. Uses the CNN and
synthetic data of ``train_mnist_like.py``.

    asyncddp run -np 4 examples/train_async.py --seconds 5
"""

import argparse
import time

import torch
import torch.nn.functional as F
from train_mnist_like import SmallCNN, make_data

import asyncddp as addp

torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="wall time of training")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="extra per-step delay x rank")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    addp.init()
    rank = addp.rank()
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = addp.DistributedWinPutOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9), model
    )
    batch_size = 16 * (rank + 1)
    images, labels = make_data(2048, seed=100 + rank)
    addp.barrier()  # start the clocks together; nothing below waits for another rank
    start, position, recent = time.monotonic(), 0, []
    while time.monotonic() - start < args.seconds:
        if position + batch_size > len(labels):
            position = 0
        x, y = images[position : position + batch_size], labels[position : position + batch_size]
        position += batch_size
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        time.sleep(rank * args.delay_ms / 1000)
        optimizer.step()
        recent = (recent + [loss.item()])[-10:]
    steps = addp.allgather(torch.tensor([optimizer.num_steps])).tolist()
    losses = addp.allgather(torch.tensor([sum(recent) / len(recent)])).tolist()
    optimizer.free()  # collective: after every rank's loop
    addp.allreduce_parameters(model.state_dict())
    test_x, test_y = make_data(1000, seed=999)
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    if rank == 0:
        print(f"steps per rank {steps}", flush=True)
        print("recent training loss per rank " + " ".join(f"{v:.3f}" for v in losses), flush=True)
        print(f"test accuracy of the averaged model {accuracy:.3f}", flush=True)
    addp.shutdown()


if __name__ == "__main__":
    main()
