"""Each rank's start in a job with torchrun's variables: ``python -m asyncddp.launcher.torch_shim COMMAND...``.

A torch.distributed script reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` when it starts, before any
MPI call, so they must be set before the rank's program runs. This shim reads the rank's own world
and local rank from what mpirun gave the process (``OMPI_COMM_WORLD_*`` under Open MPI 4 and 5,
``PMI_RANK``/``PMI_SIZE``/``MPI_LOCALRANKID``/``MPI_LOCALNRANKS`` under MPICH's Hydra), so the values
are right whatever placement mpirun chose; sets torchrun's per-rank names and ``exec``s the command,
any program; ``-m MODULE ARGS`` (how the plan runs every Python rank: ``-m mpi4py script.py``) runs
in this interpreter instead, as ``python -m MODULE ARGS`` would. The job-wide names (``MASTER_ADDR``,
``MASTER_PORT``, ...) come from the launcher (``asyncddp.launcher.torch_env``) through mpirun.

``GROUP_RANK`` (the node index) is not among mpirun's variables: it comes from the planned by-slot
layout (``ASYNCDDP_TORCH_NODES``), and only when the rank's own local rank and local size agree
with it (a placement other than the planned one leaves it unset rather than wrong). Names the user
set himself (``ASYNCDDP_TORCH_KEEP``) are left as they are. Only ``os`` and ``sys`` are imported:
this runs once per rank start.
"""

from __future__ import annotations

import os
import sys

__all__ = ["PER_RANK", "NODES_ENV", "KEEP_ENV", "RESTART_ENV", "mpi_ranks", "rank_env", "main"]

# Set on each rank from its own MPI rank.
PER_RANK = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
            "ROLE_RANK", "ROLE_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT")
NODES_ENV = "ASYNCDDP_TORCH_NODES"  # the planned ranks per node, in node order: "2,2"
KEEP_ENV = "ASYNCDDP_TORCH_KEEP"  # per-rank names the user set (-x, env:), left as they are
RESTART_ENV = "ASYNCDDP_RESTART_COUNT"  # asyncddp.launcher.restart's count of this launch


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


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m asyncddp.launcher.torch_shim COMMAND [ARGS] | -m MODULE [ARGS]", file=sys.stderr)
        return 2
    ranks = mpi_ranks(os.environ)
    if ranks is None:
        print("asyncddp: torch_shim: not started by mpirun (no OMPI_COMM_WORLD_RANK or PMI_RANK); "
              "launch with asyncddp run", file=sys.stderr)
        return 2
    os.environ.update(rank_env(ranks, os.environ))
    if argv[0] == "-m" and len(argv) > 1:
        # A Python module (mpi4py's runner of the rank's script) runs in this interpreter: one
        # interpreter start per rank, as without the shim.
        import runpy

        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        print(f"asyncddp: rank {ranks[0]}: cannot start {argv[0]} ({error.strerror or error})", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
