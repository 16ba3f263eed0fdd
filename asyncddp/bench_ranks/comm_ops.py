"""The per-rank body of ``asyncddp bench comm`` (workload ``comm`` of ``asyncddp.bench_ranks``).

For every (op, size): time asyncddp's op, time raw mpi4py moving the same bytes to the same peers
on numpy buffers and, for the neighbour ops, also the whole operation hand-written in
mpi4py + numpy (``Sendrecv`` into a buffer, then the same weighted average in place: the
baseline a user would write instead); then run the op once more on a known pattern and count
the elements that differ from the expected value computed here with numpy (never with asyncddp). Times are the
slowest rank's mean over ``iters`` after ``warmup``. Rank 0 prints one ``PROGRESS_TAG`` JSON line
per finished row (the parent draws a progress bar from them) and writes the result as JSON.

``hierarchical_neighbor_allreduce``'s baselines split the raw communicator along asyncddp's machine
ranks (a machine communicator and one of the machines' leaders), so an emulated cluster's nodes are
its machines; its expected value is each machine's mean, averaged over the Exp-2 machine graph.

In-place ops (``neighbor_allreduce_``, ``allreduce_``, ``hierarchical_neighbor_allreduce_``,
``broadcast_``) and ``allgather(x, out=)`` into a preallocated tensor keep allocation out of the
timings, as raw's preallocated buffers do (the correctness check runs ``allgather(x)``, which
allocates its result). One torch thread per rank: ranks share the cores.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import torch

import asyncddp.comm as addp
from asyncddp.bench.results import PROGRESS_TAG, BenchError, CommBenchOptions, CommBenchResult, CommRow, bus_factor
from asyncddp.topology.schedules import one_peer_exponential_two

_NP_DTYPES = {"float32": np.float32, "float64": np.float64}


def _pattern(rank: int, count: int) -> np.ndarray:
    """Rank r's test values: small integers (r + 1 + i mod 5), so sums are exact in float32."""
    return (rank + 1 + np.arange(count) % 5).astype(np.float64)


def _offsets(n: int) -> list[int]:
    """Exp-2 offsets 1, 2, 4, ... < n: rank r sends to r + d and receives from r - d."""
    return [2**k for k in range(n.bit_length()) if 2**k < n]


class _Bench:
    def __init__(self, options: CommBenchOptions) -> None:
        from mpi4py import MPI

        self.MPI, self.options = MPI, options
        self.comm = MPI.COMM_WORLD.Dup()  # raw baseline: never matched against asyncddp's traffic
        self.rank, self.n = self.comm.Get_rank(), self.comm.Get_size()
        self.np_dtype = _NP_DTYPES[options.dtype]
        self.torch_dtype = getattr(torch, options.dtype)
        self.itemsize = np.dtype(self.np_dtype).itemsize
        self.device = torch.device(options.device)
        self.in_ranks = sorted(addp.in_neighbor_ranks())
        self.degree = len(addp.out_neighbor_ranks())
        self.machine_degree = len(addp.out_neighbor_machine_ranks())
        self._machine_comms = None

    # -- helpers --
    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(self.np_dtype)).to(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _time(self, step) -> float:
        for _ in range(self.options.warmup):
            step()
        self._sync()
        self.comm.Barrier()
        start = time.perf_counter()
        for _ in range(self.options.iters):
            step()
        self._sync()
        mine = (time.perf_counter() - start) / self.options.iters
        return self.comm.allreduce(mine, op=self.MPI.MAX)

    def _wrong(self, got: torch.Tensor, expected: np.ndarray, exact: bool) -> int:
        got64 = got.detach().to("cpu", torch.float64).reshape(-1).numpy()
        if got64.shape != expected.shape:
            mismatched = max(got64.size, expected.size)
        elif exact:
            mismatched = int(np.count_nonzero(got64 != expected))
        else:  # an average divides by degree + 1: one rounding of the dtype
            rtol = 1e-6 if self.np_dtype == np.float32 else 1e-12
            mismatched = int(np.count_nonzero(~np.isclose(got64, expected, rtol=rtol, atol=0.0)))
        return self.comm.allreduce(mismatched, op=self.MPI.SUM)

    def _neighbour_average(self, count: int) -> np.ndarray:
        total = _pattern(self.rank, count) + sum(_pattern(j, count) for j in self.in_ranks)
        return total / (len(self.in_ranks) + 1)

    # -- one (op, count): (ours step, raw step, check[, raw whole-op step]) --
    def neighbor_allreduce(self, count: int):
        x = self._tensor(_pattern(self.rank, count))
        send = np.ones(count, self.np_dtype)
        recvs = [np.empty(count, self.np_dtype) for _ in _offsets(self.n)]
        mine = _pattern(self.rank, count).astype(self.np_dtype)

        def raw():
            for d, recv in zip(_offsets(self.n), recvs):
                self.comm.Sendrecv(send, (self.rank + d) % self.n, 0, recv, (self.rank - d) % self.n, 0)

        def raw_op():  # the uniform average by hand: receive every neighbour, sum, divide
            for d, recv in zip(_offsets(self.n), recvs):
                self.comm.Sendrecv(mine, (self.rank + d) % self.n, 0, recv, (self.rank - d) % self.n, 0)
            for recv in recvs:
                np.add(mine, recv, out=mine)
            np.divide(mine, len(recvs) + 1, out=mine)

        def check():
            x.copy_(self._tensor(_pattern(self.rank, count)))
            return self._wrong(addp.neighbor_allreduce_(x), self._neighbour_average(count), exact=False)

        return (lambda: addp.neighbor_allreduce_(x)), raw, check, raw_op

    def neighbor_allreduce_one_peer(self, count: int):
        x = self._tensor(_pattern(self.rank, count))
        steps = one_peer_exponential_two(self.n, self.rank)
        raw_steps = one_peer_exponential_two(self.n, self.rank)
        send, recv = np.ones(count, self.np_dtype), np.empty(count, self.np_dtype)
        offsets, index = _offsets(self.n), [0]
        mine = _pattern(self.rank, count).astype(self.np_dtype)

        def raw_op():  # the step by hand: x <- self_weight·x + w·received, in place (dst weight 1 here)
            step = next(raw_steps)
            (dst,), ((src, weight),) = list(step.dst_weights), list(step.src_weights.items())
            self.comm.Sendrecv(mine, dst, 0, recv, src, 0)
            if weight == step.self_weight:  # one-peer Exp-2: both 1/2, so (x + r)·1/2 in two passes
                np.add(mine, recv, out=mine)
                np.multiply(mine, weight, out=mine)
            else:
                np.multiply(mine, step.self_weight, out=mine)
                np.multiply(recv, weight, out=recv)
                np.add(mine, recv, out=mine)

        def ours():
            # The schedule is known to match on every rank: skip the per-step pattern check.
            addp.neighbor_allreduce_(x, **next(steps).as_kwargs(), enable_topo_check=False)

        def raw():
            d = offsets[index[0] % len(offsets)]
            index[0] += 1
            self.comm.Sendrecv(send, (self.rank + d) % self.n, 0, recv, (self.rank - d) % self.n, 0)

        def check():
            x.copy_(self._tensor(_pattern(self.rank, count)))
            first = next(one_peer_exponential_two(self.n, self.rank))  # step 0: offset 1
            addp.neighbor_allreduce_(x, **first.as_kwargs())
            expected = (_pattern(self.rank, count) + _pattern((self.rank - 1) % self.n, count)) / 2
            return self._wrong(x, expected, exact=True)

        return ours, raw, check, raw_op

    def _machines(self):
        """(local comm, cross comm or None, machine rank, machine count) of the raw baseline.

        Split from the raw baseline's own communicator along asyncddp's machine ranks, so raw
        groups ranks exactly as asyncddp does; the cross communicator holds the leaders only.
        """
        if self._machine_comms is None:
            MPI, machine, local_rank = self.MPI, addp.machine_rank(), addp.local_rank()
            local = self.comm.Split(machine, self.rank)
            cross = self.comm.Split(0 if local_rank == 0 else MPI.UNDEFINED, machine)
            self._machine_comms = (local, None if cross == MPI.COMM_NULL else cross, machine, addp.machine_size())
        return self._machine_comms

    def _hierarchical_average(self, count: int) -> np.ndarray:
        """Machine means (every rank's pattern averaged per machine), then Exp-2 averaging over machines."""
        _, _, machine, machines = self._machines()
        where = self.comm.allgather(machine)
        means = [sum(_pattern(r, count) for r in range(self.n) if where[r] == m) / where.count(m)
                 for m in range(machines)]
        sources = [(machine - d) % machines for d in _offsets(machines)]
        return (means[machine] + sum(means[m] for m in sources)) / (len(sources) + 1)

    def hierarchical_neighbor_allreduce(self, count: int):
        MPI = self.MPI
        local, cross, machine, machines = self._machines()
        x = self._tensor(_pattern(self.rank, count))
        offsets = _offsets(machines)
        buf = np.zeros(count, self.np_dtype)  # zeros: repeated in-place machine sums must not overflow
        recvs = [np.empty(count, self.np_dtype) for _ in offsets]
        mine = _pattern(self.rank, count).astype(self.np_dtype)

        def exchange(values):
            for d, recv in zip(offsets, recvs):
                cross.Sendrecv(values, (machine + d) % machines, 0, recv, (machine - d) % machines, 0)

        def raw():  # the same bytes: machine sum, leaders' exchange, machine broadcast
            local.Allreduce(MPI.IN_PLACE, buf)
            if cross is not None:
                exchange(buf)
            local.Bcast(buf, root=0)

        def raw_op():  # the whole op by hand: machine mean, leaders average with their neighbours, broadcast
            local.Allreduce(MPI.IN_PLACE, mine)
            np.divide(mine, local.Get_size(), out=mine)
            if cross is not None:
                exchange(mine)
                for recv in recvs:
                    np.add(mine, recv, out=mine)
                np.divide(mine, len(recvs) + 1, out=mine)
            local.Bcast(mine, root=0)

        def check():
            x.copy_(self._tensor(_pattern(self.rank, count)))
            got = addp.hierarchical_neighbor_allreduce_(x)
            return self._wrong(got, self._hierarchical_average(count), exact=False)

        return (lambda: addp.hierarchical_neighbor_allreduce_(x)), raw, check, raw_op

    def allreduce(self, count: int):
        x = self._tensor(np.zeros(count))  # zeros: repeated in-place sums must not overflow
        buf = np.zeros(count, self.np_dtype)  # raw: the same in-place sum (Allreduce(IN_PLACE))

        def check():
            x.copy_(self._tensor(_pattern(self.rank, count)))
            expected = sum(_pattern(j, count) for j in range(self.n))
            return self._wrong(addp.allreduce_(x, average=False), expected, exact=True)

        return (lambda: addp.allreduce_(x, average=False)), (lambda: self.comm.Allreduce(self.MPI.IN_PLACE, buf)), check

    def allgather(self, count: int):
        x = self._tensor(_pattern(self.rank, count))
        send, recv = np.ones(count, self.np_dtype), np.empty(count * self.n, self.np_dtype)
        out = self._tensor(np.zeros(count * self.n))  # preallocated, like raw's recv

        def check():
            expected = np.concatenate([_pattern(j, count) for j in range(self.n)])
            return self._wrong(addp.allgather(x), expected, exact=True)

        return (lambda: addp.allgather(x, out=out)), (lambda: self.comm.Allgather(send, recv)), check

    def broadcast(self, count: int):
        x = self._tensor(_pattern(self.rank, count))
        buf = np.ones(count, self.np_dtype)

        def check():
            x.copy_(self._tensor(_pattern(self.rank, count)))
            return self._wrong(addp.broadcast_(x, 0), _pattern(0, count), exact=True)

        return (lambda: addp.broadcast_(x, 0)), (lambda: self.comm.Bcast(buf, root=0)), check

    def win_put(self, count: int):
        MPI = self.MPI
        x = self._tensor(_pattern(self.rank, count))
        name = f"asyncddp.bench.win_put.{count}"
        addp.win_create(x, name)
        if self.device.type == "cpu":  # put from the window's own memory, as DistributedWinPutOptimizer does
            x = addp.win_memory(name)
        nbytes = count * self.itemsize
        # Raw baseline: a window with one slot per in-neighbour. Exp-2 is shift-symmetric: the
        # writers of every target are r - 2^k, so slot k is this rank's alone on target r + 2^k.
        raw_win = MPI.Win.Allocate(nbytes * max(1, len(self.in_ranks)), 1, comm=self.comm)
        payload = np.ones(count, self.np_dtype)
        targets = [((self.rank + d) % self.n, k) for k, d in enumerate(_offsets(self.n))]

        def raw():
            for target, slot in targets:
                raw_win.Lock(target, MPI.LOCK_SHARED)
                raw_win.Put([payload.view(np.uint8), MPI.BYTE], target, (slot * nbytes, nbytes, MPI.BYTE))
                raw_win.Unlock(target)

        def check():
            x.copy_(self._tensor(_pattern(self.rank, count)))
            self.comm.Barrier()
            addp.win_put(x, name)
            self.comm.Barrier()  # every put has completed (Unlock) before anyone reads
            got = addp.win_update(name, clone=True)
            wrong = self._wrong(got, self._neighbour_average(count), exact=False)
            addp.win_free(name)
            raw_win.Free()
            return wrong

        return (lambda: addp.win_put(x, name)), raw, check

    def row(self, op: str, size: int) -> CommRow:
        per_rank = size // self.n if op == "allgather" else size
        count = max(1, per_rank // self.itemsize)
        ours, raw, check, *whole = getattr(self, op)(count)
        ours_s, raw_s = self._time(ours), self._time(raw)
        raw_op_s = self._time(whole[0]) if whole else raw_s  # elsewhere raw already is the whole op
        wrong = check()
        size_bytes = count * self.itemsize * (self.n if op == "allgather" else 1)
        factor = bus_factor(op, self.n, self.machine_degree if op.startswith("hierarchical") else self.degree)
        algbw = size_bytes / ours_s / 1e9
        return CommRow(op=op, size_bytes=size_bytes, count=count, dtype=self.options.dtype,
                       time_us=round(ours_s * 1e6, 3), algbw_gbs=round(algbw, 6),
                       busbw_gbs=round(algbw * factor, 6), num_wrong=wrong,
                       raw_time_us=round(raw_s * 1e6, 3),
                       raw_busbw_gbs=round(size_bytes / raw_s / 1e9 * factor, 6),
                       ratio=round(ours_s / raw_s, 3), raw_op_time_us=round(raw_op_s * 1e6, 3),
                       op_ratio=round(ours_s / raw_op_s, 3))


def run(options: CommBenchOptions) -> CommBenchResult:
    """Every row of the benchmark; call on every rank after ``asyncddp.init()``."""
    from mpi4py import MPI

    if addp.size() < 2:
        raise BenchError("bench comm needs at least 2 ranks (-np 2 or more)")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch sees no CUDA device on this host; use --device cpu")
    if options.device == "cuda":
        torch.cuda.set_device(addp.local_rank() % torch.cuda.device_count())
    bench = _Bench(options)
    rows, total = [], len(options.ops) * len(options.sizes)
    for op in options.ops:
        for size in options.sizes:
            rows.append(bench.row(op, size))
            if options.progress and bench.rank == 0:
                print(PROGRESS_TAG, json.dumps({"done": len(rows), "total": total, "op": op, "size": size}),
                      flush=True)
    if bench._machine_comms is not None:
        local, cross, _, _ = bench._machine_comms
        local.Free()
        if cross is not None:
            cross.Free()
    bench.comm.Free()
    return CommBenchResult(num_ranks=bench.n, device=options.device, dtype=options.dtype,
                           iters=options.iters, warmup=options.warmup, rows=tuple(rows),
                           host=socket.gethostname(), mpi_library=MPI.Get_library_version().splitlines()[0].strip())


def run_rank(payload: dict) -> dict | None:
    """The benchmark for ``CommBenchOptions`` as a dict; rank 0 returns the result as a dict."""
    result = run(CommBenchOptions.from_dict(payload))
    return result.to_dict() if addp.rank() == 0 else None
