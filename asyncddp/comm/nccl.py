"""Optional NCCL data path for CUDA tensors (``ASYNCDDP_BACKEND=nccl``).

MPI stays in charge of everything else (bootstrap, pattern checks, CPU tensors, collectives):
NCCL only carries the payload of neighbour exchanges of CUDA tensors, through
``torch.distributed.batch_isend_irecv`` on a NCCL process group bootstrapped from MPI — rank and
size from the world communicator, a ``tcp://`` rendezvous address chosen by rank 0 and broadcast
over MPI. NCCL refuses two ranks on one GPU, so the backend is used only when every rank of every
machine has a GPU of its own; otherwise all ranks agree to fall back to MPI with one warning.
Before the NCCL payload a zero-byte MPI message per peer carries the shape/dtype tag, so a
neighbour with another shape is still a ``CommError`` rather than a NCCL hang.
"""

from __future__ import annotations

import socket
import warnings

import torch

from asyncddp.comm.env import env_choice
from asyncddp.errors import CommError

__all__ = ["BACKEND_ENV", "requested_backend", "NcclPath", "maybe_start"]

BACKEND_ENV = "ASYNCDDP_BACKEND"


def requested_backend() -> str:
    return env_choice(BACKEND_ENV, "mpi", ("mpi", "nccl"), "a backend")


def _why_not(local_comm) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_nccl_available()):
        return "this torch build has no NCCL"
    if local_comm.Get_size() > torch.cuda.device_count():
        return (
            f"{local_comm.Get_size()} ranks share {torch.cuda.device_count()} GPU(s) on one machine "
            "and NCCL needs a GPU per rank"
        )
    return None


class NcclPath:
    """The NCCL process group and the exchange that uses it."""

    def __init__(self, world, local_comm) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.device = torch.device("cuda", local_comm.Get_rank())
        torch.cuda.set_device(self.device)
        self.owned = not dist.is_initialized()  # a group the user made is the user's to destroy
        if self.owned:
            address = None
            if world.Get_rank() == 0:
                with socket.socket() as probe:
                    probe.bind(("", 0))
                    port = probe.getsockname()[1]
                address = f"tcp://{socket.gethostbyname(socket.gethostname())}:{port}"
            address = world.bcast(address, root=0)
            dist.init_process_group(
                "nccl", init_method=address, rank=world.Get_rank(), world_size=world.Get_size()
            )

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()

    def exchange(self, engine, comm, sends: dict, recv_specs: dict, device_like) -> dict:
        from mpi4py import MPI

        from asyncddp.comm.p2p import spec_tag

        torch.cuda.set_device(self.device)  # the communication thread has its own current device
        heads = [comm.Irecv([bytearray(0), MPI.BYTE], source=s, tag=MPI.ANY_TAG) for s in recv_specs]
        heads += [comm.Isend([bytearray(0), MPI.BYTE], dest=d, tag=spec_tag(t.shape, t.dtype)) for d, t in sends.items()]
        statuses = [MPI.Status() for _ in heads]
        MPI.Request.Waitall(heads, statuses)
        for (src, (shape, dtype)), status in zip(recv_specs.items(), statuses):
            if status.Get_tag() != spec_tag(shape, dtype):
                raise CommError(
                    f"rank {src} sent a tensor whose shape or dtype differs from this rank's: every "
                    "rank must pass tensors of the same shape and dtype to this op"
                )
        out = {s: torch.empty(shape, dtype=dtype, device=device_like.device) for s, (shape, dtype) in recv_specs.items()}
        ops = [self.dist.P2POp(self.dist.irecv, out[s], s) for s in recv_specs]
        ops += [self.dist.P2POp(self.dist.isend, t.contiguous(), d) for d, t in sends.items()]
        if ops:
            for request in self.dist.batch_isend_irecv(ops):
                request.wait()
        engine.count_sent(len(heads) + len(sends), sum(t.nbytes for t in sends.values()))
        return out


def maybe_start(world, local_comm) -> NcclPath | None:
    """The NCCL path when asked for and possible on every rank, else None (with a warning)."""
    if requested_backend() != "nccl":
        return None
    reason = _why_not(local_comm)
    reasons = world.allgather(reason)
    failing = [(r, why) for r, why in enumerate(reasons) if why]
    if failing:
        rank, why = failing[0]
        if world.Get_rank() == 0:
            warnings.warn(
                f"{BACKEND_ENV}=nccl: falling back to MPI because on rank {rank} {why}",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    return NcclPath(world, local_comm)
