"""The per-rank body of ``asyncddp bench converge``: one method trained to a held-out accuracy.

Workload ``converge`` of ``asyncddp.bench_ranks``. Every rank builds the task (seeded), starts
from rank 0's weights, trains on its shard of the training set (``split_indices``, the same
split on every rank) with SGD and the method's wrapper (``asyncddp.bench.methods``), and every
``eval_every`` steps stops the clock to evaluate: its own model on the common test set, the
average of all ranks' parameters, and the consensus distance max_i ‖x_i − x̄‖/‖x̄‖. The
evaluation talks over the context's communicator with plain mpi4py, outside the comm core, so
it is neither timed nor counted in the bytes (``asyncddp.comm_stats``, reset once the wrapper is
built). Rank 0 gathers everything into one ``ConvergeRow``.
"""

from __future__ import annotations

import copy
import json
import socket
import time

import numpy as np
import torch
import torch.nn.functional as F

import asyncddp.comm as addp
from asyncddp.bench.converge import (ConvergeEval, ConvergeOptions, ConvergeRow, TaskError, first_at_target,
                                     split_indices)
from asyncddp.bench.results import PROGRESS_TAG
from asyncddp.bench_ranks.converge_tasks import load_task
from asyncddp.bench_ranks.training import _NEVER_FREED, _ddp, after_shutdown, rank_device, wrap_for_method
from asyncddp.comm.traffic import allreduce_bytes
from asyncddp.errors import ConfigError

__all__ = ["run_rank", "after_shutdown"]


def _flat(model) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()]).numpy()


class _Batches:
    """Minibatches of this rank's shard: a fresh seeded shuffle every pass."""

    def __init__(self, x, y, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, min(batch_size, len(y))
        self.g = torch.Generator().manual_seed(seed)
        self.order, self.at = torch.randperm(len(y), generator=self.g), 0

    def next(self):
        if self.at + self.batch_size > len(self.order):
            self.order, self.at = torch.randperm(len(self.y), generator=self.g), 0
        index = self.order[self.at:self.at + self.batch_size]
        self.at += self.batch_size
        return self.x[index], self.y[index]


def _score(model, x, y, device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``x``, ``y``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x.to(device))
        loss = F.cross_entropy(logits, y.to(device)).item()
        accuracy = (logits.argmax(1).cpu() == y).float().mean().item()
    model.train(was_training)
    return accuracy, loss


class _Evaluator:
    """Evaluations on the held-out set, over plain mpi4py (not timed, not counted)."""

    def __init__(self, comm, module, task, device) -> None:
        self.comm, self.module, self.task, self.device = comm, module, task, device
        self.average = copy.deepcopy(module)
        self.points: list[ConvergeEval] = []

    def __call__(self, step: int, train_s: float, sent: float) -> ConvergeEval | None:
        from mpi4py import MPI

        comm, n = self.comm, self.comm.Get_size()
        accuracy, loss = _score(self.module, self.task.test_x, self.task.test_y, self.device)
        mine = _flat(self.module)
        mean = mine.copy()
        comm.Allreduce(MPI.IN_PLACE, mean, op=MPI.SUM)
        mean /= n
        distance = float(np.linalg.norm(mine - mean) / max(np.linalg.norm(mean), 1e-30))
        gathered = comm.gather((accuracy, loss, distance, train_s, sent), root=0)
        if comm.Get_rank() != 0:
            return None
        torch.nn.utils.vector_to_parameters(torch.from_numpy(mean).float().to(self.device),
                                            self.average.parameters())
        averaged, _ = _score(self.average, self.task.test_x, self.task.test_y, self.device)
        accs = [g[0] for g in gathered]
        point = ConvergeEval(step=step, time_s=max(g[3] for g in gathered), bytes_sent=sum(g[4] for g in gathered) / n,
                             mean_accuracy=sum(accs) / n, min_accuracy=min(accs), averaged_accuracy=averaged,
                             mean_loss=sum(g[1] for g in gathered) / n, consensus_distance=max(g[2] for g in gathered))
        self.points.append(point)
        return point


def _same_start(comm, model) -> None:
    """Every rank starts from rank 0's parameters and buffers (a user's model may not be seeded)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            host = tensor.detach().cpu().contiguous()
            comm.Bcast(host.numpy() if host.dtype != torch.bfloat16 else host.view(torch.int16).numpy(), root=0)
            tensor.copy_(host)


def _shard(task, options: ConvergeOptions, comm):
    try:
        shards = split_indices(task.train_y.numpy(), comm.Get_size(), options.split, options.seed)
    except ConfigError as error:  # this task at this rank count: every method would fail alike
        raise TaskError(f"--task {options.task} -np {comm.Get_size()}: {error}") from None
    mine = torch.tensor(shards[comm.Get_rank()], dtype=torch.int64)
    sizes = [len(s) for s in shards]
    classes = [len(set(task.train_y[torch.tensor(s, dtype=torch.int64)].tolist())) for s in shards]
    return task.train_x[mine], task.train_y[mine], sizes, classes


def _setup(options: ConvergeOptions, model, lr: float, device, notes):
    """(the module trained, its optimizer, what to keep alive) for ``options.method``."""
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if options.method == "local":
        return model, sgd, ()
    if options.method == "ddp":
        trained, store = _ddp(model, device, shared_gpu=bool(notes))
        return trained, torch.optim.SGD(trained.parameters(), lr=lr, momentum=0.9), (trained, store)
    return model, wrap_for_method(options.method, sgd, model, options.sync_every), ()


def _train(options, trained, optimizer, batches, evaluate, device, computed_step_bytes: int | None):
    """The training loop: steps timed, evaluations not; returns (steps, training seconds)."""
    train_s = 0.0
    evaluate(0, 0.0, 0.0)
    for step in range(1, options.steps + 1):
        start = time.perf_counter()
        x, y = batches.next()
        optimizer.zero_grad()
        F.cross_entropy(trained(x.to(device)), y.to(device)).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s += time.perf_counter() - start
        if step % options.eval_every == 0 or step == options.steps:
            sent = step * computed_step_bytes if computed_step_bytes is not None else addp.comm_stats().bytes_sent
            point = evaluate(step, train_s, float(sent))
            if point is not None and options.progress:
                print(PROGRESS_TAG, json.dumps({"step": step, "steps": options.steps,
                                                "accuracy": point.mean_accuracy}), flush=True)
    return train_s


def run(options: ConvergeOptions) -> dict | None:
    """This rank's part; rank 0 returns ``{"row", "info"}``, the others None."""
    device, notes = rank_device(options)
    comm = addp.get_context().comm
    torch.manual_seed(options.seed)
    task = load_task(options.task, options.width)
    model = task.model.to(device)
    _same_start(comm, model)
    lr = task.lr if options.lr is None else options.lr
    target = task.target_accuracy if options.target_accuracy is None else options.target_accuracy
    x, y, sizes, classes = _shard(task, options, comm)
    batches = _Batches(x, y, options.batch_size, options.seed * 1000 + comm.Get_rank())
    trained, optimizer, keep = _setup(options, model, lr, device, notes)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    computed = allreduce_bytes(grads, comm.Get_size()) if options.method == "ddp" else None
    comm.Barrier()
    addp.reset_comm_stats()
    evaluate = _Evaluator(comm, model, task, device)
    _train(options, trained, optimizer, batches, evaluate, device, computed)
    by_kind = comm.gather(addp.comm_stats().bytes_by_kind, root=0)
    if hasattr(optimizer, "flush"):
        optimizer.flush()
    if hasattr(optimizer, "free"):
        optimizer.free()
    _NEVER_FREED.extend(keep)
    if comm.Get_rank() != 0:
        return None
    return {"row": _row(options, evaluate.points, target, by_kind, computed is not None, notes).to_dict(),
            "info": {"target_accuracy": target, "lr": lr, "num_parameters": sum(p.numel() for p in model.parameters()),
                     "train_size": len(task.train_y), "test_size": len(task.test_y), "shard_sizes": sizes,
                     "shard_classes": classes, "task_description": task.description, "host": socket.gethostname()}}


def _row(options, points, target: float, by_kind, computed: bool, notes) -> ConvergeRow:
    last = points[-1]
    reached = first_at_target(points, target)
    kinds = sorted({kind for ranks in by_kind for kind in ranks})
    mean_kinds = {kind: sum(ranks.get(kind, 0) for ranks in by_kind) / len(by_kind) for kind in kinds}
    if computed:
        notes = (*notes, "torch DDP's traffic goes through gloo/NCCL, not the comm core: bytes computed as a ring "
                         "allreduce of every gradient each step, 2(n-1)/n x 4 bytes x parameters")
        mean_kinds = {"ddp_allreduce (computed)": last.bytes_sent}
    return ConvergeRow(method=options.method, final_accuracy=last.mean_accuracy, min_rank_accuracy=last.min_accuracy,
                       averaged_model_accuracy=last.averaged_accuracy,
                       time_to_target_s=reached.time_s if reached else None,
                       steps_to_target=reached.step if reached else None, bytes_sent_per_rank=last.bytes_sent,
                       steps=last.step, consensus_distance=last.consensus_distance, final_loss=last.mean_loss,
                       train_time_s=last.time_s, bytes_to_target=reached.bytes_sent if reached else None,
                       bytes_counted="computed" if computed else "measured", bytes_by_kind=mean_kinds,
                       curve=tuple(points), notes=tuple(notes))


def run_rank(payload: dict) -> dict | None:
    return run(ConvergeOptions(**payload))
