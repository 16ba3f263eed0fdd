"""Decentralized least squares: DGD, exact diffusion and gradient tracking on a ring.

Rank r holds A_r (m x d) and b_r; together they minimise (1/n) sum_r 1/2 ||A_r x - b_r||^2. The
local solutions differ (each rank's b_r comes from its own x_r), so:

* DGD, ``x <- W (x - a grad_r(x))``, stops at a bias proportional to the step a;
* exact diffusion (Yuan et al.) corrects that bias: ``psi+ = x - a grad_r(x)``,
  ``phi = psi+ + x - psi``, ``x+ = (I + W)/2 phi``;
* gradient tracking: ``x+ = W x - a y``, ``y+ = W y + grad_r(x+) - grad_r(x)`` (one fused
  neighbour exchange of [x, y] per step)

and the last two reach the centralized solution x* to machine precision. W is the ring's
uniform mixing matrix (symmetric, doubly stochastic). Rank 0 prints one JSON line per run.

    asyncddp run -np 4 examples/least_squares.py
"""

import argparse
import json

import torch

import asyncddp as addp

torch.set_num_threads(1)
DIM, ROWS = 5, 40


def local_problem(rank: int):
    g = torch.Generator().manual_seed(7 + rank)
    a = torch.randn(ROWS, DIM, generator=g, dtype=torch.float64) / ROWS**0.5
    x_own = torch.randn(DIM, generator=g, dtype=torch.float64) * (1 + rank)
    b = a @ x_own + 0.1 * torch.randn(ROWS, generator=g, dtype=torch.float64)
    return a, b


def centralized_solution(n: int) -> torch.Tensor:
    """x* from the normal equations over every rank's data (each rank can compute it: the
    data are seeded per rank)."""
    gram = sum(local_problem(r)[0].T @ local_problem(r)[0] for r in range(n))
    rhs = sum(local_problem(r)[0].T @ local_problem(r)[1] for r in range(n))
    return torch.linalg.solve(gram, rhs)


def dgd(a, b, step, steps):
    x = torch.zeros(DIM, dtype=torch.float64)
    for _ in range(steps):
        x = addp.neighbor_allreduce(x - step * (a.T @ (a @ x - b)))
    return x


def exact_diffusion(a, b, step, steps):
    x = torch.zeros(DIM, dtype=torch.float64)
    psi = x.clone()
    for _ in range(steps):
        psi_next = x - step * (a.T @ (a @ x - b))
        phi = psi_next + x - psi
        x = 0.5 * (phi + addp.neighbor_allreduce(phi))  # (I + W)/2
        psi = psi_next
    return x


def gradient_tracking(a, b, step, steps):
    x = torch.zeros(DIM, dtype=torch.float64)
    grad = a.T @ (a @ x - b)
    y = grad.clone()
    for _ in range(steps):
        mixed = addp.neighbor_allreduce(torch.cat([x, y]))
        x_next = mixed[:DIM] - step * y
        grad_next = a.T @ (a @ x_next - b)
        y = mixed[DIM:] + grad_next - grad
        x, grad = x_next, grad_next
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dgd-steps", type=float, nargs="+", default=[0.2, 0.1],
                        help="DGD step sizes (each run for --dgd-iters iterations)")
    parser.add_argument("--dgd-iters", type=int, default=60)
    parser.add_argument("--ed-step", type=float, default=0.4)
    parser.add_argument("--ed-iters", type=int, default=80)
    parser.add_argument("--gt-step", type=float, default=0.13)
    parser.add_argument("--gt-iters", type=int, default=200)
    args = parser.parse_args()
    addp.init()
    n = addp.size()
    addp.set_topology(addp.ring_graph(n))
    a, b = local_problem(addp.rank())
    x_star = centralized_solution(n)

    def report(method, step, iters, x):
        error = torch.tensor([float((x - x_star).norm())], dtype=torch.float64)
        worst = addp.allreduce(error, op="max").item()
        if addp.rank() == 0:
            print(json.dumps({"method": method, "step": step, "iterations": iters,
                              "max_error": worst}), flush=True)  # fmt: skip

    for step in args.dgd_steps:
        report("dgd", step, args.dgd_iters, dgd(a, b, step, args.dgd_iters))
    x = exact_diffusion(a, b, args.ed_step, args.ed_iters)
    report("exact_diffusion", args.ed_step, args.ed_iters, x)
    x = gradient_tracking(a, b, args.gt_step, args.gt_iters)
    report("gradient_tracking", args.gt_step, args.gt_iters, x)
    addp.shutdown()


if __name__ == "__main__":
    main()
