"""Time one-peer neighbour averaging against MPI Allreduce and raw mpi4py Sendrecv.

Run under mpirun, e.g. ``mpirun -np 8 python examples/bench_neighbor_allreduce.py``. For each
size (float32, 1 KB to 64 MB) it reports the per-call time (slowest rank, mean over iterations) of

* ``addp``: ``asyncddp.neighbor_allreduce`` with the one-peer step "send to r+1, receive from
  r-1, weights 1/2" (``enable_topo_check=False``; ``addp+check`` with the default check on;
  ``addp_`` the in-place ``neighbor_allreduce_``, which writes into the caller's tensor like
  ``raw`` writes into a preallocated array — overhead and speed-up columns use it),
* ``raw``: the same step written directly with mpi4py (``Sendrecv`` + numpy average), the floor
  our overhead is measured against,
* ``allreduce``: ``MPI.COMM_WORLD.Allreduce`` of the whole tensor (what data-parallel SGD does).

``--json`` prints the rows as JSON instead of a table. Each rank uses one torch thread.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from mpi4py import MPI

import asyncddp as addp

SIZES = [2**k for k in range(10, 27, 2)]  # 1 KB ... 64 MB


def _time(fn, comm, min_seconds=0.25, max_iters=200) -> float:
    fn()  # warm-up (allocations, connection setup)
    comm.Barrier()
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        elapsed = time.perf_counter() - start
        # Every rank must run the same number of iterations: decide collectively.
        done = comm.allreduce(int(iters >= max_iters or (iters >= 3 and elapsed >= min_seconds)), op=MPI.MIN)
        if done:
            break
    per_call = (time.perf_counter() - start) / iters
    return comm.allreduce(per_call, op=MPI.MAX)


def bench(sizes) -> list[dict]:
    comm = MPI.COMM_WORLD
    r, n = comm.Get_rank(), comm.Get_size()
    nxt, prev = (r + 1) % n, (r - 1) % n
    rows = []
    for nbytes in sizes:
        x = torch.full((nbytes // 4,), float(r))
        xa = x.numpy()
        recv = np.empty_like(xa)
        out = np.empty_like(xa)
        summed = xa.copy()
        step = dict(self_weight=0.5, src_weights={prev: 0.5}, dst_weights={nxt: 1.0})

        y = x.clone()

        def ours():
            addp.neighbor_allreduce(x, **step, enable_topo_check=False)

        def ours_in_place():
            addp.neighbor_allreduce_(y, **step, enable_topo_check=False)

        def ours_checked():
            addp.neighbor_allreduce(x, **step)

        def raw():
            comm.Sendrecv(xa, dest=nxt, recvbuf=recv, source=prev)
            np.add(xa, recv, out=out)
            np.multiply(out, 0.5, out=out)

        def allreduce():
            comm.Allreduce(MPI.IN_PLACE, summed, op=MPI.SUM)

        row = {"bytes": nbytes}
        for key, fn in (("addp", ours), ("addp_", ours_in_place), ("addp_check", ours_checked), ("raw", raw), ("allreduce", allreduce)):
            row[key] = _time(fn, comm)
        row["overhead_pct"] = 100.0 * (row["addp_"] / row["raw"] - 1.0)
        row["speedup_vs_allreduce"] = row["allreduce"] / row["addp_"]
        rows.append(row)
        expected = 0.5 * r + 0.5 * prev
        assert addp.neighbor_allreduce(x, **step)[0].item() == expected
    return rows


def _human(nbytes: int) -> str:
    return f"{nbytes // 2**20} MB" if nbytes >= 2**20 else f"{nbytes // 2**10} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--max-bytes", type=int, default=SIZES[-1])
    args = parser.parse_args()
    # One intra-op thread per rank, as usual for several MPI ranks per machine: torch's default
    # (a thread per core in every rank) makes the averaging arithmetic fight over the cores.
    torch.set_num_threads(1)
    addp.init()
    rows = bench([s for s in SIZES if s <= args.max_bytes])
    if addp.rank() == 0:
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(f"ranks={addp.size()} (times in ms per call, slowest rank)")
            print(f"{'size':>7} {'addp':>9} {'addp_':>9} {'addp+check':>11} {'raw':>9} {'allreduce':>10} {'overhead':>9} {'vs allreduce':>12}")
            for row in rows:
                print(
                    f"{_human(row['bytes']):>7} {row['addp'] * 1e3:9.3f} {row['addp_'] * 1e3:9.3f} {row['addp_check'] * 1e3:11.3f}"
                    f" {row['raw'] * 1e3:9.3f} {row['allreduce'] * 1e3:10.3f}"
                    f" {row['overhead_pct']:8.1f}% {row['speedup_vs_allreduce']:11.2f}x"
                )
    addp.shutdown()


if __name__ == "__main__":
    main()
