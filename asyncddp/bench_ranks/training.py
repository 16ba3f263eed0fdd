"""The per-rank body of ``asyncddp bench MODEL``: one (method, np) run, launched by the runner.

Workload ``training`` of ``asyncddp.bench_ranks``. Every rank builds
the same model (seed 0), a synthetic batch of random ImageNet-shaped images and labels (seeded by
rank), and first times plain forward/backward/SGD steps (the compute-only reference of
``ModelRun.compute_ms``); then installs the method's wrapper and times the same steps again.
Rank 0 gathers every rank's mean iteration times and writes a ``ModelRun``. One torch thread per
rank: ranks share the cores, and np=1 must not get all of them.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import torch
import torch.nn.functional as F

import asyncddp.comm as addp
from asyncddp.bench_ranks.models import NUM_CLASSES, build_model
from asyncddp.bench.methods import DEFAULT_SYNC_EVERY, get_method
from asyncddp.bench.results import BenchError, ModelBenchOptions, ModelRun


def rank_device(options) -> tuple[torch.device, list[str]]:
    """This rank's device for ``options.device`` (a GPU by local rank), and a note when ranks share GPUs."""
    if options.device == "cpu":
        return torch.device("cpu"), []
    if not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA GPU visible on this rank")
    count = torch.cuda.device_count()
    notes = []
    if addp.local_size() > count:
        notes.append(f"{addp.local_size()} ranks per host share {count} GPU(s) (host staging; ddp on gloo)")
    return torch.device(f"cuda:{addp.local_rank() % count}"), notes


def _ddp(model, device: torch.device, shared_gpu: bool):
    """torch DDP. Rank 0 starts the rendezvous store on a port the kernel picks (port 0, so no
    other process can take it between choosing and binding) and broadcasts its address over MPI."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    comm = addp.get_context().comm
    me, size = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    timeout = timedelta(seconds=120)  # a rank that never arrives fails the run, not hangs it
    address = None
    if me == 0:
        local = len(set(hosts)) == 1
        host = "127.0.0.1" if local else socket.gethostbyname(socket.gethostname())
        # wait_for_workers=False: the others learn the port only from the broadcast below.
        store = dist.TCPStore(host, 0, size, is_master=True, timeout=timeout, wait_for_workers=False)
        address = (host, store.port)
    host, port = comm.bcast(address, root=0)
    if me != 0:
        store = dist.TCPStore(host, port, size, is_master=False, timeout=timeout)
    backend = "nccl" if device.type == "cuda" and not shared_gpu else "gloo"
    dist.init_process_group(backend, store=store, rank=me, world_size=size, timeout=timeout)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids), store


# DDP's reducer and gloo process group are never torn down in this process: their C++
# destructor joins gloo worker threads while holding the GIL, and a worker still finishing a
# future callback needs the GIL, so the rank can hang, in an explicit teardown as well as in
# garbage collection at exit. They are kept here, and
# ``after_shutdown`` ends a ddp run with MPI_Finalize and os._exit once the result is written.
_NEVER_FREED: list = []


def wrap_for_method(method: str, optimizer, model, sync_every: int = DEFAULT_SYNC_EVERY):
    """``optimizer`` wrapped the way bench method ``method`` trains (not ``local`` or ``ddp``;
    the registry ``asyncddp.bench.methods`` says how); ``sync_every``: local steps per outer step
    of the methods that take local steps."""
    wrap = get_method(method).wrap
    if wrap is None:
        raise BenchError(f"method {method!r} has no optimizer wrapper (local and ddp are set up by the run)")
    return wrap(optimizer, model, sync_every)


def _timed_steps(model, optimizer, images, labels, warmup: int, iters: int, device) -> list[float]:
    """Seconds per timed iteration (zero_grad, forward, backward, step), after ``warmup`` untimed ones."""
    times = []
    for index in range(warmup + iters):
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run(options: ModelBenchOptions) -> ModelRun | None:
    """This rank's part of the run; rank 0 returns the gathered ``ModelRun``, the others None."""
    device, notes = rank_device(options)
    torch.manual_seed(0)  # the same initial weights on every rank, as after a broadcast
    model = build_model(options.model, options.image_size).to(device)
    g = torch.Generator().manual_seed(1 + addp.rank())
    images = torch.randn(options.batch_size, 3, options.image_size, options.image_size, generator=g).to(device)
    labels = torch.randint(0, NUM_CLASSES, (options.batch_size,), generator=g).to(device)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    compute = _timed_steps(model, sgd, images, labels, options.warmup, options.iters, device)
    comm = addp.get_context().comm
    comm.Barrier()
    trained, optimizer = model, sgd
    if options.method == "ddp":
        trained, store = _ddp(model, device, shared_gpu=bool(notes))
        optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3, momentum=0.9)
    elif options.method != "local":
        optimizer = wrap_for_method(options.method, sgd, model, options.sync_every)
    comm.Barrier()
    times = _timed_steps(trained, optimizer, images, labels, options.warmup, options.iters, device)
    if hasattr(optimizer, "flush"):
        optimizer.flush()
    if hasattr(optimizer, "free"):
        optimizer.free()
    if options.method == "ddp":
        _NEVER_FREED.extend((trained, store))
    mine = (sum(times) / len(times), sum(compute) / len(compute))
    gathered = comm.gather(mine, root=0)
    if comm.Get_rank() != 0:
        return None
    iter_s = [t for t, _ in gathered]
    mean_iter = sum(iter_s) / len(iter_s)
    mean_compute = sum(c for _, c in gathered) / len(gathered)
    per_rank = [options.batch_size / t for t in iter_s]
    shares = [max(0.0, 1.0 - c / t) for t, c in gathered]
    return ModelRun(method=options.method, num_ranks=comm.Get_size(), img_s_total=sum(per_rank),
                    img_s_per_rank=sum(per_rank) / len(per_rank), iter_ms=1e3 * mean_iter,
                    compute_ms=1e3 * mean_compute, comm_share=sum(shares) / len(shares),
                    iter_ms_per_rank=tuple(1e3 * t for t in iter_s), notes=tuple(notes))


def run_rank(payload: dict) -> dict | None:
    """One run for ``ModelBenchOptions`` as a dict; rank 0 returns ``{"run", "num_parameters", "host"}``."""
    options = ModelBenchOptions(**payload)
    result = run(options)
    if result is None:
        return None
    params = sum(p.numel() for p in build_model(options.model, options.image_size).parameters())
    return {"run": result.to_dict(), "num_parameters": params, "host": socket.gethostname()}


def after_shutdown() -> None:
    """End a ddp run with MPI_Finalize and os._exit (see ``_NEVER_FREED``); success only, so an
    error keeps its traceback and exit status."""
    if _NEVER_FREED:
        from mpi4py import MPI

        sys.stdout.flush()
        sys.stderr.flush()
        MPI.Finalize()
        os._exit(0)
