"""torchrun's environment on every rank, so torch.distributed scripts run unchanged under mpirun.

A script written for ``torchrun`` reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and
``MASTER_ADDR``/``MASTER_PORT`` when it starts (``dist.init_process_group("gloo")`` with no
arguments, Lightning's and Accelerate's world detection), before any MPI call. Two halves:

- the launcher (``job_env``, called by ``asyncddp.launcher.plan``) sets what is the same on every
  rank: ``MASTER_ADDR`` (rank 0's host as the other hosts reach it), ``MASTER_PORT`` (chosen once
  per job), ``TORCHELASTIC_RUN_ID``/``TORCHELASTIC_MAX_RESTARTS``, and tells the ranks the planned
  ranks per node and which names the user set himself;
- each rank starts as ``python -m asyncddp.launcher.torch_env COMMAND...`` (``main``): it reads its
  own world and local rank from what mpirun gave the process (``OMPI_COMM_WORLD_*`` under Open MPI
  4 and 5, ``PMI_RANK``/``MPI_LOCALRANKID`` under MPICH's Hydra), sets torchrun's per-rank names
  and ``exec``s the command, the same path for scripts, ``-m module`` and any other program.

A name the user set with ``-x`` or the config's ``env:`` is never overwritten. ``GROUP_RANK`` (the
node index) is not among mpirun's variables: it comes from the planned by-slot layout, and only
when the rank's own local rank and local size agree with that layout (a ``--mpi-args`` mapping
that places ranks otherwise leaves it unset rather than wrong).
"""

from __future__ import annotations

import fnmatch
import os
import socket
import sys
import uuid
from dataclasses import dataclass

__all__ = ["TorchJob", "PER_RANK", "JOB_NAMES", "NODES_ENV", "KEEP_ENV", "new_run_id", "free_port", "user_set",
           "master_addr", "job_env", "node_layout", "mpi_ranks", "rank_env", "planned_ranks", "main"]

# Set on each rank from its own MPI rank (``rank_env``).
PER_RANK = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
            "ROLE_RANK", "ROLE_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT")
# The same on every rank, set by the launcher (``job_env``).
JOB_NAMES = ("MASTER_ADDR", "MASTER_PORT", "ROLE_NAME", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_MAX_RESTARTS")
NODES_ENV = "ASYNCDDP_TORCH_NODES"  # the planned ranks per node, in node order: "2,2"
KEEP_ENV = "ASYNCDDP_TORCH_KEEP"  # per-rank names the user set (-x, env:), left as they are
RESTART_ENV = "ASYNCDDP_RESTART_COUNT"  # asyncddp.launcher.restart's count of this launch
SHIM = ("-m", "asyncddp.launcher.torch_env")


@dataclass(frozen=True)
class TorchJob:
    """The job-wide choices: ``master_port`` (None: ``plan_job`` picks a free one), the run id, and
    ``master_addr`` where the launcher knows better than the host list (an emulated node's address)."""

    master_port: int | None = None
    run_id: str | None = None
    master_addr: str | None = None


def new_run_id() -> str:
    return f"asyncddp-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A TCP port free on this machine now (the kernel's pick), for rank 0's rendezvous store."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def user_set(env_forward: tuple[str, ...], env_set: tuple[tuple[str, str], ...]) -> set[str]:
    """torchrun's names the user gave with ``-x NAME``, ``-x NAME=value``, a glob or ``env:``."""
    given = {name for name, _ in env_set}
    names = PER_RANK + JOB_NAMES
    return {name for name in names if name in given or any(fnmatch.fnmatchcase(name, p) for p in env_forward)}


def master_addr(hosts, first_rank_host: str, this_host: str | None = None) -> str:
    """Rank 0's host as every rank can reach it: loopback when no host is reached over ssh, the
    host's own name when it is, and this machine's name when rank 0 runs here beside remote hosts."""
    from asyncddp.launcher.hosts import launches_over_ssh

    first = next(host for host in hosts if host.name == first_rank_host)
    if launches_over_ssh(first):
        return first.name
    if not any(launches_over_ssh(host) for host in hosts):
        return "127.0.0.1"
    return this_host or socket.gethostname()


def node_layout(rank_hosts: tuple[str, ...] | list[str]) -> list[int]:
    """Ranks per node in node order, from the plan's rank -> host map (by-slot: contiguous)."""
    counts: dict[str, int] = {}
    for host in rank_hosts:
        counts[host] = counts.get(host, 0) + 1
    return list(counts.values())


def job_env(job: TorchJob, hosts, rank_hosts, max_restarts: int, user: set[str]) -> dict[str, str]:
    """The launcher's variables for every rank; names in ``user`` are the user's and left out."""
    values = {
        "MASTER_ADDR": job.master_addr or master_addr(hosts, rank_hosts[0]),
        "MASTER_PORT": str(job.master_port),
        "ROLE_NAME": "default",
        "TORCHELASTIC_RUN_ID": job.run_id or "none",
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
    }
    env = {name: value for name, value in values.items() if name not in user}
    env[NODES_ENV] = ",".join(str(count) for count in node_layout(rank_hosts))
    keep = sorted(name for name in user if name in PER_RANK)
    if keep:
        env[KEEP_ENV] = ",".join(keep)
    return env


def mpi_ranks(environ) -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local size) from mpirun's own variables, or None."""
    for names in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                   "OMPI_COMM_WORLD_LOCAL_SIZE"),
                  ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")):
        raw = [environ.get(name, "") for name in names]
        if all(value.isdigit() for value in raw):
            rank, size, local_rank, local_size = (int(value) for value in raw)
            return rank, size, local_rank, local_size
    return None


def _node_of(rank: int, local_rank: int, local_size: int, layout: list[int]) -> int | None:
    start = 0
    for node, count in enumerate(layout):
        if rank < start + count:
            return node if (rank - start, count) == (local_rank, local_size) else None
        start += count
    return None


def _layout(text: str) -> list[int]:
    parts = text.split(",") if text else []
    return [int(part) for part in parts] if all(part.isdigit() for part in parts) else []


def rank_env(ranks: tuple[int, int, int, int], environ) -> dict[str, str]:
    """torchrun's per-rank names for a rank whose MPI ranks are ``ranks``, less the user's own."""
    rank, size, local_rank, local_size = ranks
    values = {"RANK": rank, "WORLD_SIZE": size, "LOCAL_RANK": local_rank, "LOCAL_WORLD_SIZE": local_size,
              "ROLE_RANK": rank, "ROLE_WORLD_SIZE": size,
              "TORCHELASTIC_RESTART_COUNT": environ.get(RESTART_ENV, "0")}
    layout = _layout(environ.get(NODES_ENV, ""))
    node = _node_of(rank, local_rank, local_size, layout)
    if node is not None:
        values.update(GROUP_RANK=node, GROUP_WORLD_SIZE=len(layout))
    keep = set(environ.get(KEEP_ENV, "").split(","))
    return {name: str(value) for name, value in values.items() if name not in keep}


def planned_ranks(rank_hosts, env: dict[str, str]) -> list[dict[str, str]]:
    """What each rank will be given when mpirun maps the ranks as planned (``--dry-run``)."""
    layout = node_layout(rank_hosts)
    out = []
    for node, count in enumerate(layout):
        for local in range(count):
            rank = sum(layout[:node]) + local
            out.append(rank_env((rank, len(rank_hosts), local, count), env))
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m asyncddp.launcher.torch_env COMMAND [ARGS]", file=sys.stderr)
        return 2
    ranks = mpi_ranks(os.environ)
    if ranks is None:
        print("asyncddp: torch_env: not started by mpirun (no OMPI_COMM_WORLD_RANK or PMI_RANK); "
              "launch with asyncddp run", file=sys.stderr)
        return 2
    os.environ.update(rank_env(ranks, os.environ))
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        print(f"asyncddp: rank {ranks[0]}: cannot start {argv[0]} ({error.strerror or error})", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
