"""Push-sum consensus over one-sided windows: every rank ends with the exact global average.

Each rank holds ``[x, 1]``. Every step it adds ``[x, 1] / (out-degree + 1)`` into each
out-neighbour's window buffer (``win_accumulate``, passive target: the neighbour takes no part),
keeps the same share itself, then folds whatever arrived into its own value
(``win_update_then_collect``). The weights are column-stochastic, not doubly stochastic, so
``x`` alone drifts on a directed graph, but ``x / weight`` converges to the exact average.

    asyncddp run -np 4 examples/push_sum.py        # or: mpirun -np 4 python examples/push_sum.py
"""

import torch

import asyncddp as addp


def main(num_steps: int = 60) -> None:
    addp.init()  # default topology: exponential_two_graph(size()), directed for 4 ranks
    rank, size = addp.rank(), addp.size()
    outs = addp.out_neighbor_ranks()
    value = float(rank * rank + 1)
    state = torch.tensor([value, 1.0], dtype=torch.float64)
    addp.win_create(state, "push_sum", zero_init=True)
    share = 1.0 / (len(outs) + 1)
    for _ in range(num_steps):
        addp.win_accumulate(state, "push_sum", self_weight=share,
                            dst_weights={t: share for t in outs})
        addp.barrier()  # a synchronous schedule, so the result is reproducible
        addp.win_update_then_collect("push_sum")
        addp.barrier()
    estimate = state[0].item() / state[1].item()
    exact = sum(r * r + 1 for r in range(size)) / size
    print(f"rank {rank}: push-sum estimate {estimate:.9f}, exact average {exact:.9f}, "
          f"error {abs(estimate - exact):.1e}", flush=True)
    addp.win_free()
    addp.shutdown()


if __name__ == "__main__":
    main()
