"""From what the user typed to a launch plan on this machine: the one planning path.

``asyncddp run``, every ``asyncddp bench`` command and ``asyncddp ipy start`` call ``plan_job`` with
a ``RunOptions``: it reads the cluster config, merges it with the flags, finds the MPI (the same
mpirun for all of them, see ``asyncddp.launcher.mpi.find_mpirun``) and builds the plan with this
process's Python, user and core count. ``check_ssh`` is the preflight that refuses to start
mpirun when a remote host cannot be reached (mpirun itself would hang or fail late).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from asyncddp.errors import LaunchError
from asyncddp.launcher.config import RunConfig, RunOptions, load_config, merge_run_config
from asyncddp.launcher.mpi import MpiInstall, detect_mpi
from asyncddp.launcher.plan import LaunchPlan, build_plan

__all__ = ["PlannedJob", "plan_job", "check_ssh"]


@dataclass(frozen=True)
class PlannedJob:
    """The plan ``asyncddp.launcher.job.run_plan`` executes and the merged config it came from."""

    plan: LaunchPlan
    config: RunConfig


def _check_dir(working_dir: str | None) -> str | None:
    # A working directory that exists only on the remote hosts cannot be checked from here.
    if working_dir is None:
        return os.getcwd()
    return working_dir if os.path.isdir(working_dir) else None


def plan_job(options: RunOptions, private_dir: str, *, mpi: MpiInstall | None = None,
             python: str = sys.executable) -> PlannedJob:
    """The plan for ``options`` on this machine; ``private_dir`` (a 0700 directory of this job)
    receives its ssh_config and links. ``mpi`` None: the MPI ``find_mpirun`` picks."""
    cluster = load_config(options.config) if options.config else None
    config = merge_run_config(options, cluster)
    plan = build_plan(config, mpi or detect_mpi(python=python), python=python, euid=os.geteuid(),
                      private_dir=str(Path(private_dir).absolute()), check_dir=_check_dir(config.working_dir),
                      cpu_count=os.cpu_count())
    return PlannedJob(plan, config)


def check_ssh(config: RunConfig, requested: bool | None = None) -> None:
    """Refuse to start mpirun when a remote host cannot be reached over SSH (LaunchError naming
    each host and the fix). ``requested`` False skips it; None runs it when any host is remote."""
    from asyncddp.doctor.core import is_local

    remote = [host for host in config.hosts if not is_local(host)]
    if requested is False or not remote:
        return
    from asyncddp.doctor import ssh_preflight

    problems = ssh_preflight(remote, known_hosts=config.known_hosts)
    if problems:
        raise LaunchError("SSH preflight failed, mpirun not started: " + "; ".join(problems)
                          + " (details: asyncddp doctor; skip the check: --no-preflight)")
