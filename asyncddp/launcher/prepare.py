"""From what the user typed to a launch plan on this machine: the one planning path.

``asyncddp run``, every ``asyncddp bench`` command and ``asyncddp ipy start`` call ``plan_job`` with
a ``RunOptions``: it reads the cluster config, merges it with the flags, finds the MPI (the same
mpirun for all of them, see ``asyncddp.launcher.mpi.find_mpirun``) and builds the plan with this
process's Python, user and core count. An emulated cluster (``--emulate`` or the config's
``emulate:``) is one more host source and one plan transform here, and ``job_running`` builds it
around the job, so every command that starts ranks can run on one. ``check_ssh`` is the preflight that refuses to start
mpirun when a remote host cannot be reached (mpirun itself would hang or fail late).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from asyncddp.errors import ConfigError, LaunchError
from asyncddp.launcher.config import load_config
from asyncddp.launcher.run_config import RunConfig, RunOptions, merge_run_config
from asyncddp.launcher.mpi import MpiInstall, detect_mpi
from asyncddp.launcher.plan import LaunchPlan, build_plan

if TYPE_CHECKING:
    from asyncddp.launcher.emulate import EmulatedCluster

__all__ = ["PlannedJob", "plan_job", "check_ssh", "job_running", "preflight_failure", "finish_timeline"]


@dataclass(frozen=True)
class PlannedJob:
    """The plan ``asyncddp.launcher.job.run_plan`` executes and the merged config it came from."""

    plan: LaunchPlan
    config: RunConfig
    emulated: EmulatedCluster | None = None

    def describe(self) -> str:
        """The ``--dry-run`` text: the emulated cluster (if any), then the mpirun command."""
        from asyncddp.launcher.plan import format_plan

        return (self.emulated.describe() + "\n\n" if self.emulated else "") + format_plan(self.plan)

    def to_dict(self) -> dict:
        return {**self.plan.to_dict(), **({"emulate": self.emulated.to_dict()} if self.emulated else {})}


def _check_dir(config: RunConfig, cluster) -> str | None:
    """Where the ranks start, when it is on this machine: a local job's ``working_dir`` must be a
    directory here (else mpirun could not even be started there). One that may exist only on the
    remote hosts cannot be checked from here: None, no script checks."""
    from asyncddp.launcher.hosts import launches_over_ssh
    from asyncddp.launcher.input_files import file_kind

    path = config.working_dir
    if path is None:
        return os.getcwd()
    if os.path.isdir(path):
        return path
    if any(launches_over_ssh(host) for host in config.hosts):
        return None
    try:
        why = f"is {file_kind(os.stat(path).st_mode)}, not a directory"
    except OSError as error:
        why = "does not exist" if isinstance(error, FileNotFoundError) else f"cannot be used ({error.strerror})"
    where = (cluster.working_dir_where if cluster is not None else "") or "working_dir"
    raise ConfigError(f"{where} {path} {why} on this machine, where the ranks start; create it or fix working_dir")


def plan_job(options: RunOptions, private_dir: str, *, mpi: MpiInstall | None = None,
             python: str = sys.executable) -> PlannedJob:
    """The plan for ``options`` on this machine; ``private_dir`` (a 0700 directory of this job)
    receives its ssh_config and links. ``mpi`` None: the MPI ``find_mpirun`` picks."""
    cluster = load_config(options.config) if options.config else None
    emulated = _emulated_cluster(options, cluster)
    if emulated is not None:
        options = replace(options, host_list=emulated.host_list(),
                          num_ranks=options.num_ranks or emulated.spec.num_ranks)
    config = merge_run_config(options, cluster)
    if emulated is not None:
        config = replace(config, host_source=f"--emulate {emulated.spec.describe()}")
    config = _torch_job(config, emulated)
    plan = build_plan(config, mpi or detect_mpi(python=python), python=python, euid=os.geteuid(),
                      private_dir=str(Path(private_dir).absolute()), check_dir=_check_dir(config, cluster),
                      cpu_count=os.cpu_count())
    if emulated is not None:
        from asyncddp.launcher.emulate import emulate_plan

        plan = emulate_plan(plan, emulated, cpu_count=os.cpu_count())
    return PlannedJob(plan, config, emulated)


def _torch_job(config: RunConfig, emulated) -> RunConfig:
    """The job's torchrun choices made here: a free MASTER_PORT unless pinned, a run id, and on an
    emulated cluster node 0's address (its hostname resolves only inside the nodes)."""
    if config.torch is None:
        return config
    from asyncddp.launcher import torch_env

    torch = replace(config.torch, master_port=config.torch.master_port or torch_env.free_port(),
                    run_id=config.torch.run_id or torch_env.new_run_id(),
                    master_addr=emulated.nodes[0].address if emulated is not None else config.torch.master_addr)
    return replace(config, torch=torch)


def _emulated_cluster(options: RunOptions, cluster):
    """The planned cluster of ``--emulate`` (over the config's ``emulate:``), or None."""
    if options.emulate is None and (cluster is None or cluster.emulate is None):
        return None
    from asyncddp.launcher.emulate import new_cluster
    from asyncddp.launcher.emulate_spec import parse_emulate_spec

    if options.hostfile is not None or options.host_list is not None:
        raise ConfigError("--emulate makes its own hosts (emu0, emu1, ...); drop --hostfile/-H")
    return new_cluster(parse_emulate_spec(options.emulate) if options.emulate is not None else cluster.emulate)


@contextlib.contextmanager
def job_running(job: PlannedJob):
    """The context a planned job runs in: its emulated cluster built and torn down around it (for a
    real cluster, nothing to build), and its timeline completed after it however it ended."""
    if job.emulated is None:
        cluster = contextlib.nullcontext()
    else:
        from asyncddp.launcher.emulate import emulated_cluster

        cluster = emulated_cluster(job.emulated)
    before = _modified(job.plan.env.get("ASYNCDDP_TIMELINE"))
    with cluster:
        try:
            yield
        finally:
            note = finish_timeline(job.plan.env, before)
            if note:
                print(note, file=sys.stderr, flush=True)


def _modified(path: str | None) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def finish_timeline(env: dict[str, str], before: int | None = None) -> str | None:
    """After a job on this machine with ``--timeline``: the events of ranks that ended without
    ``shutdown()`` merged into the timeline file; a line to show when that happened or when no
    rank recorded anything (None: nothing to say). ``before``: the file's modification time
    before the job (None: there was none), to tell this job's file from an older one."""
    from asyncddp.comm.timeline import PARTS_ENV, TIMELINE_ENV, merge_parts

    parts, path = env.get(PARTS_ENV), env.get(TIMELINE_ENV)
    if not parts or not path:
        return None
    try:
        written, ranks = merge_parts(Path(parts), Path(path))
    except OSError as error:
        return f"asyncddp: --timeline {path}: the ranks' events could not be merged ({error.strerror or error})"
    if written is not None:
        return (f"asyncddp: timeline of rank{'s' if len(ranks) > 1 else ''} {_ranges(ranks)} written to {path} "
                "(the script did not call asyncddp.shutdown())")
    if _modified(path) in (None, before):
        return (f"asyncddp: --timeline {path}: no rank recorded a timeline (the script ran no asyncddp "
                "operation after asyncddp.init())")
    return None


def _ranges(ranks: list[int]) -> str:
    """0,1,2,5 -> "0-2, 5"."""
    runs: list[list[int]] = []
    for rank in ranks:
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def check_ssh(job: PlannedJob, requested: bool | None = None) -> None:
    """Refuse to start mpirun when a remote host cannot be reached over SSH (LaunchError naming
    each host and the fix). ``requested`` False skips it; None runs it when any host is remote.
    An emulated cluster's nodes are entered without SSH, so there is nothing to check."""
    from asyncddp.launcher.hosts import launches_over_ssh

    config = job.config
    remote = [host for host in config.hosts if launches_over_ssh(host)]
    if requested is False or not remote or job.emulated is not None:
        return
    from asyncddp.launcher.ssh import ssh_preflight

    problems = ssh_preflight(remote, known_hosts=config.known_hosts)
    if problems:
        raise LaunchError(preflight_failure(problems, len(remote)))


# Hosts named in full when the preflight fails: the rest are counted, so a cluster of hundreds of
# unreachable hosts still gets one readable line (asyncddp doctor lists every host).
PREFLIGHT_SHOWN = 3


def preflight_failure(problems: list[str], checked: int) -> str:
    """The one line of a failed SSH preflight: the first hosts' problems, then how many more."""
    shown = "; ".join(problems[:PREFLIGHT_SHOWN])
    more = len(problems) - PREFLIGHT_SHOWN
    if more > 0:
        shown += f"; and {more} more host{'s' if more > 1 else ''}"
    return (f"SSH preflight failed for {len(problems)} of {checked} remote hosts, mpirun not started: {shown} "
            "(details for every host: asyncddp doctor; skip the check: --no-preflight)")
