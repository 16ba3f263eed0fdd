"""torchrun's environment on every rank, so torch.distributed scripts run unchanged under mpirun.

A script written for ``torchrun`` reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and
``MASTER_ADDR``/``MASTER_PORT`` when it starts (``dist.init_process_group("gloo")`` with no
arguments, Lightning's and Accelerate's world detection), before any MPI call. Two halves:

- the launcher (``job_env``, called by ``asyncddp.launcher.plan``) sets what is the same on every
  rank: ``MASTER_ADDR`` (rank 0's host as the other hosts reach it), ``MASTER_PORT`` (chosen once
  per job), ``TORCHELASTIC_RUN_ID``/``TORCHELASTIC_MAX_RESTARTS``, and tells the ranks the planned
  ranks per node and which names the user set himself;
- each rank starts as ``python -m asyncddp.launcher.torch_shim COMMAND...``, which reads its own
  world and local rank from what mpirun gave the process, sets torchrun's per-rank names and
  ``exec``s the command (``asyncddp.launcher.torch_shim``, kept apart so a rank's start imports
  nothing but ``os`` and ``sys``).

A name the user set with ``-x`` or the config's ``env:`` is never overwritten.
"""

from __future__ import annotations

import fnmatch
import socket
import uuid
from dataclasses import dataclass

from asyncddp.launcher.torch_shim import KEEP_ENV, NODES_ENV, PER_RANK, rank_env

__all__ = ["TorchJob", "PER_RANK", "JOB_NAMES", "NODES_ENV", "KEEP_ENV", "SHIM", "new_run_id", "free_port",
           "user_set", "master_addr", "job_env", "node_layout", "planned_ranks"]

# The same on every rank, set by the launcher (``job_env``).
JOB_NAMES = ("MASTER_ADDR", "MASTER_PORT", "ROLE_NAME", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_MAX_RESTARTS")
SHIM = ("-m", "asyncddp.launcher.torch_shim")  # each rank's command follows


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


def planned_ranks(rank_hosts, env: dict[str, str]) -> list[dict[str, str]]:
    """What each rank will be given when mpirun maps the ranks as planned (``--dry-run``)."""
    layout = node_layout(rank_hosts)
    out = []
    for node, count in enumerate(layout):
        for local in range(count):
            rank = sum(layout[:node]) + local
            out.append(rank_env((rank, len(rank_hosts), local, count), env))
    return out
