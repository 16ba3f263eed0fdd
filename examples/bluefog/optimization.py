"""Decentralized least squares written against BlueFog's API, run through asyncddp's compat layer.

Rank i holds its own rows ``A_i, b_i`` and the ranks jointly minimise
``f(x) = 1/n * sum_i f_i(x)`` with ``f_i(x) = ||A_i x - b_i||^2 / (2m)``; the local minimisers all
differ (the noise differs), so a method that only averages does not reach the global one. Four
algorithms, as in BlueFog's optimization example (W is the mixing matrix of the topology):

* ``diffusion`` (adapt-then-combine): ``x <- W (x - lr * grad(x))``. Converges to a neighbourhood
  of x* whose size shrinks with ``lr``; not exact.
* ``exact_diffusion``: ``psi = x - lr*grad(x); phi = psi + x - psi_prev; x = W' phi`` with
  ``W' = (I + W) / 2``. The correction term removes diffusion's bias: exact convergence.
* ``gradient_tracking``: ``x <- W (x - lr * y); y <- W y + grad(x_new) - grad(x_old)``; y tracks
  the average gradient, so x converges exactly.
* ``push_diging``: gradient tracking for *directed* graphs with column-stochastic weights: each
  rank pushes equal shares of ``[u - lr*y, y, v]`` to its out-neighbours' windows
  (``win_accumulate``), keeps one share and folds in what arrived (``win_update_then_collect``);
  ``x = u / v`` corrects the imbalance as in push-sum.

The exact solution is computed once with two allreduces (normal equations) to report the error.
Only the two import lines differ from a BlueFog script. Run it with::

    asyncddp run -np 4 examples/bluefog/optimization.py --method exact_diffusion
    asyncddp run -np 4 examples/bluefog/optimization.py --method all
"""

import argparse

import torch

import asyncddp.compat.bluefog as bf
from asyncddp.compat import topology_util

TOPOLOGIES = {
    "expo2": lambda n: topology_util.ExponentialGraph(n),
    "ring": lambda n: topology_util.RingGraph(n),
    "full": lambda n: topology_util.FullyConnectedGraph(n),
}
METHODS = ("diffusion", "exact_diffusion", "gradient_tracking", "push_diging")


def parse_args():
    parser = argparse.ArgumentParser(description="decentralized least squares with BlueFog's API")
    parser.add_argument("--method", default="exact_diffusion", choices=METHODS + ("all",))
    parser.add_argument("--virtual-topology", default="expo2", choices=sorted(TOPOLOGIES))
    parser.add_argument("--rows", type=int, default=30, help="rows of A per rank")
    parser.add_argument("--dim", type=int, default=8, help="unknowns")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--max-iters", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


def make_problem(args):
    torch.manual_seed(args.seed + bf.rank())
    a = torch.randn(args.rows, args.dim, dtype=torch.float64)
    x_true = torch.arange(args.dim, dtype=torch.float64)
    b = a @ x_true + 0.5 * torch.randn(args.rows, dtype=torch.float64)
    return a, b


def gradient(a, b, x):
    return a.T @ (a @ x - b) / a.shape[0]


def exact_solution(a, b):
    # The same m on every rank, so the global minimiser solves (sum A_i^T A_i) x = sum A_i^T b_i.
    gram = bf.allreduce(a.T @ a, average=False, name="gram")
    rhs = bf.allreduce(a.T @ b, average=False, name="rhs")
    return torch.linalg.solve(gram, rhs)


def diffusion(a, b, args):
    x = torch.zeros(args.dim, dtype=torch.float64)
    for _ in range(args.max_iters):
        x = bf.neighbor_allreduce(x - args.lr * gradient(a, b, x), name="x")
    return x


def exact_diffusion(a, b, args):
    self_weight, src_weights = topology_util.GetRecvWeights(bf.load_topology(), bf.rank())
    if not src_weights:  # unweighted topology: uniform averaging over the in-neighbours
        share = 1.0 / (len(bf.in_neighbor_ranks()) + 1)
        self_weight, src_weights = share, {r: share for r in bf.in_neighbor_ranks()}
    # W' = (I + W) / 2, which keeps the iteration stable.
    half_self = (1.0 + self_weight) / 2
    half_src = {r: w / 2 for r, w in src_weights.items()}
    x = torch.zeros(args.dim, dtype=torch.float64)
    psi_prev = x.clone()
    for _ in range(args.max_iters):
        psi = x - args.lr * gradient(a, b, x)
        phi = psi + x - psi_prev
        x = bf.neighbor_allreduce(phi, self_weight=half_self, src_weights=half_src, name="x")
        psi_prev = psi
    return x


def gradient_tracking(a, b, args):
    x = torch.zeros(args.dim, dtype=torch.float64)
    grad = gradient(a, b, x)
    y = grad.clone()
    for _ in range(args.max_iters):
        x = bf.neighbor_allreduce(x - args.lr * y, name="x")
        y = bf.neighbor_allreduce(y, name="y")
        grad_new = gradient(a, b, x)
        y += grad_new - grad
        grad = grad_new
    return x


def push_diging(a, b, args):
    n = args.dim
    outgoing = bf.out_neighbor_ranks()
    share = 1.0 / (len(outgoing) + 1)  # column-stochastic: a rank splits its mass equally
    x = torch.zeros(n, dtype=torch.float64)
    grad = gradient(a, b, x)
    # One buffer [u (n), y (n), v (1)] is the window: neighbours accumulate into it.
    z = torch.cat([x, grad, torch.ones(1, dtype=torch.float64)])
    bf.win_create(z, name="z", zero_init=True)
    for _ in range(args.max_iters):
        z[:n] -= args.lr * z[n : 2 * n]  # u - lr * y
        bf.win_accumulate(z, name="z", dst_weights={r: share for r in outgoing}, require_mutex=True)
        z.mul_(share)
        bf.barrier()  # every push of this round has landed
        bf.win_update_then_collect(name="z")
        bf.barrier()  # nobody pushes the next round into a buffer not yet collected
        x = z[:n] / z[-1]
        grad_new = gradient(a, b, x)
        z[n : 2 * n] += grad_new - grad
        grad = grad_new
    bf.win_free(name="z")
    return x


def main():
    args = parse_args()
    bf.init()
    bf.set_topology(TOPOLOGIES[args.virtual_topology](bf.size()))
    a, b = make_problem(args)
    x_star = exact_solution(a, b)
    for method in METHODS if args.method == "all" else (args.method,):
        x = globals()[method](a, b, args)
        error = bf.allreduce(torch.tensor([float(torch.norm(x - x_star))]), average=True, name="err")
        if bf.rank() == 0:
            print(f"optimization {method} {args.virtual_topology} ranks={bf.size()} "
                  f"iters={args.max_iters} mean_distance_to_optimum={error.item():.3e}")
    bf.shutdown()


if __name__ == "__main__":
    main()
