"""Synthetic training throughput written against BlueFog's API, run through asyncddp's compat layer.

Like BlueFog's benchmark script: a model trained on random data, with the distributed optimizer
chosen by ``--dist-optimizer`` (BlueFog's choices), reporting samples per second per rank and in
total. ``--atc-style`` picks adapt-then-combine instead of adapt-with-combine for the neighbour
types; ``--disable-dynamic-topology`` keeps the static exponential graph (otherwise each step
talks to one peer, as BlueFog's script does). ``all`` runs every choice in turn.

Only the two import lines differ from a BlueFog script. Run it with::

    asyncddp run -np 4 examples/bluefog/benchmark.py --dist-optimizer neighbor_allreduce
"""

import argparse
import time

import torch

import asyncddp.compat.bluefog as bf
from asyncddp.compat import topology_util

CHOICES = ("neighbor_allreduce", "hierarchical_neighbor_allreduce", "allreduce", "gradient_allreduce",
           "win_put")


def parse_args():
    parser = argparse.ArgumentParser(description="synthetic benchmark with BlueFog's API")
    parser.add_argument("--dist-optimizer", default="neighbor_allreduce", choices=CHOICES + ("all",))
    parser.add_argument("--atc-style", action="store_true")
    parser.add_argument("--disable-dynamic-topology", action="store_true")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP")
    parser.add_argument("--num-warmup-batches", type=int, default=3)
    parser.add_argument("--num-batches-per-iter", type=int, default=5)
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    return parser.parse_args()


def make_optimizer(kind, model, args):
    base = torch.optim.SGD(model.parameters(), lr=args.lr * bf.size(), momentum=0.9)
    if kind == "win_put":
        return bf.DistributedWinPutOptimizer(base, model=model)
    if kind == "gradient_allreduce":
        return bf.DistributedGradientAllreduceOptimizer(base, model=model)
    communication = getattr(bf.CommunicationType, kind)
    if args.atc_style:
        return bf.DistributedAdaptThenCombineOptimizer(base, model=model, communication_type=communication)
    return bf.DistributedAdaptWithCombineOptimizer(base, model=model, communication_type=communication)


def benchmark(kind, args):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, args.width), torch.nn.ReLU(),
                                torch.nn.Linear(args.width, args.width), torch.nn.ReLU(),
                                torch.nn.Linear(args.width, 10))
    optimizer = make_optimizer(kind, model, args)
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    bf.broadcast_optimizer_state(optimizer, root_rank=0)
    torch.manual_seed(1 + bf.rank())  # every rank its own synthetic batch
    data = torch.randn(args.batch_size, 64)
    target = torch.randint(0, 10, (args.batch_size,))
    dynamic = kind == "neighbor_allreduce" and not args.disable_dynamic_topology and bf.size() > 1
    peers = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank()) if dynamic else None

    def one_batch():
        if peers is not None:  # one peer per step, weights set on the optimizer as in BlueFog
            send_ranks, recv_ranks = next(peers)
            optimizer.self_weight = 1.0 / (len(recv_ranks) + 1)
            optimizer.src_weights = {r: 1.0 / (len(recv_ranks) + 1) for r in recv_ranks}
            optimizer.dst_weights = {r: 1.0 for r in send_ranks}
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(args.num_warmup_batches):
        one_batch()
    rates = []
    for _ in range(args.num_iters):
        started = time.perf_counter()
        for _ in range(args.num_batches_per_iter):
            loss = one_batch()
        rates.append(args.batch_size * args.num_batches_per_iter / (time.perf_counter() - started))
    if kind == "win_put":
        bf.barrier()
        optimizer.free()
    mean = sum(rates) / len(rates)
    total = bf.allreduce(torch.tensor([mean]), average=False, name="rate").item()
    if bf.rank() == 0:
        style = "atc" if args.atc_style else "awc"
        print(f"benchmark {kind} {style} ranks={bf.size()} samples_per_sec_per_rank={mean:.1f} "
              f"total_samples_per_sec={total:.1f} last_loss={loss:.4f}")


def main():
    args = parse_args()
    bf.init()
    for kind in CHOICES if args.dist_optimizer == "all" else (args.dist_optimizer,):
        benchmark(kind, args)
    bf.shutdown()


if __name__ == "__main__":
    main()
