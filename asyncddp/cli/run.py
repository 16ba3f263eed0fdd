"""``asyncddp run``: launch a script, module or command on every rank through mpirun.

Thin layer: flags -> ``RunOptions``; ``merge_run_config`` applies the config file; ``build_plan``
makes the mpirun command; ``--dry-run`` prints it, otherwise ``run_plan`` runs it and its exit code
becomes ours. Everything after the script (or ``-m module``, or a command) goes to the ranks
untouched: click stops parsing at the first positional argument.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import typer

MPIRUN_ENV = "ASYNCDDP_MPIRUN"  # an explicit mpirun, overriding the search


def _mpi_install():
    from asyncddp.errors import LaunchError
    from asyncddp.launcher.job import mpi_version_text
    from asyncddp.launcher.plan import MpiInstall, find_mpirun, parse_mpi_version, venv_prefix

    mpirun = os.environ.get(MPIRUN_ENV) or find_mpirun()
    if not (os.path.isfile(mpirun) and os.access(mpirun, os.X_OK)):
        raise LaunchError(f"{MPIRUN_ENV}={mpirun} is not an executable file; fix or unset it")
    return MpiInstall(mpirun, parse_mpi_version(mpi_version_text(mpirun)), venv_prefix(mpirun))


def _check_dir(working_dir: str | None) -> str | None:
    # A working directory that exists only on the remote hosts cannot be checked from here.
    if working_dir is None:
        return os.getcwd()
    return working_dir if os.path.isdir(working_dir) else None


def _preflight(run_config, requested: bool | None) -> None:
    """Refuse to start mpirun when a remote host cannot be reached: mpirun would hang or fail late."""
    from asyncddp.doctor.core import is_local

    remote = [host for host in run_config.hosts if not is_local(host)]
    if requested is False or not remote:
        return
    from asyncddp.doctor import ssh_preflight
    from asyncddp.errors import LaunchError

    problems = ssh_preflight(remote, known_hosts=run_config.known_hosts)
    if problems:
        raise LaunchError(
            "SSH preflight failed, mpirun not started: " + "; ".join(problems)
            + " (details: asyncddp doctor; skip the check: --no-preflight)"
        )


def _emulated_cluster(flag: str | None, cluster, options):
    """The planned emulated cluster of ``--emulate`` (over the config's ``emulate:``), or None."""
    if flag is None and (cluster is None or cluster.emulate is None):
        return None
    from asyncddp.errors import ConfigError
    from asyncddp.launcher.emulate import new_cluster
    from asyncddp.launcher.emulate_spec import parse_emulate_spec

    if options.hostfile is not None or options.host_list is not None:
        raise ConfigError("--emulate makes its own hosts (emu0, emu1, ...); drop --hostfile/-H")
    return new_cluster(parse_emulate_spec(flag) if flag is not None else cluster.emulate)


def register(app: typer.Typer) -> None:
    @app.command(
        "run",
        context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    )
    def run_command(
        command: list[str] = typer.Argument(None, metavar="SCRIPT.py [ARGS] | -m MODULE [ARGS] | COMMAND [ARGS]",
                                            help="What every rank runs."),
        num_ranks: int = typer.Option(None, "-np", "--np", "-n", help="Number of ranks."),
        hostfile: str = typer.Option(None, "--hostfile", help="Open MPI hostfile (host slots=N)."),
        hosts: str = typer.Option(None, "-H", "--host", help="Hosts, e.g. a:4,b:4."),
        config: str = typer.Option(None, "--config", help="YAML cluster config (see configs/)."),
        env: list[str] = typer.Option(None, "-x", help="Forward NAME, NAME=value or a glob like NCCL_*; repeatable."),
        network: str = typer.Option(None, "--network-interface", help="Interface name or CIDR subnet for MPI traffic."),
        mpi_args: str = typer.Option(None, "--mpi-args", "--extra-mpi-flags", help="Extra mpirun arguments, one quoted string."),
        output_dir: str = typer.Option(None, "--output-dir", help="Also write each rank's output to DIR/rank.N.log."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the mpirun command and rank map; run nothing."),
        as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the plan as JSON."),
        timeout: float = typer.Option(None, "--timeout", help="Kill the job after this many seconds (exit 124)."),
        timeline: str = typer.Option(None, "--timeline", "--timeline-filename",
                                     help="Ranks write a communication timeline to PATH."),
        oversubscribe: bool = typer.Option(False, "--oversubscribe", help="Allow more ranks than slots."),
        ssh_port: int = typer.Option(None, "-p", "--ssh-port", help="ssh port for hosts that set none (bfrun's -p)."),
        use_infiniband: bool = typer.Option(False, "--use-infiniband",
                                            help="bfrun's flag: use Open MPI's UCX transport (--mca pml ucx)."),
        preflight: bool = typer.Option(
            None, "--preflight/--no-preflight",
            help="Check SSH to every remote host before starting mpirun (default: on when any host is remote)."),
        emulate: str = typer.Option(
            None, "--emulate",
            help="Run on an emulated cluster on this machine (root and iproute2): "
                 "nodes=N[,ranks_per_node=K][,bandwidth=RATE][,latency=T][,loss=P][,slow_node=I:RATE]."),
    ) -> None:
        """Run a script, -m module or command on every rank: asyncddp run -np 4 train.py ARGS..."""
        from asyncddp.launcher.config import RunOptions, load_config, merge_run_config
        from asyncddp.launcher.plan import build_plan, format_plan

        options = RunOptions(
            command=tuple(command or ()), num_ranks=num_ranks, hostfile=hostfile, host_list=hosts,
            config=config, env=tuple(env or ()), network=network, mpi_args=mpi_args, output_dir=output_dir,
            timeout=timeout, timeline=timeline, oversubscribe=oversubscribe, ssh_port=ssh_port,
            use_infiniband=use_infiniband,
        )
        cluster = load_config(config) if config else None
        emulated = _emulated_cluster(emulate, cluster, options)
        if emulated is not None:
            options = replace(options, host_list=emulated.host_list(),
                              num_ranks=options.num_ranks or emulated.spec.num_ranks)
        run_config = merge_run_config(options, cluster)
        if emulated is not None:
            run_config = replace(run_config, host_source=f"--emulate {emulated.spec.describe()}")
        # The private ssh_config lives with the logs (--output-dir), else in a 0700 directory of
        # this run alone, removed when the job ends.
        private_dir = output_dir or tempfile.mkdtemp(prefix=f"asyncddp-{os.getuid()}-")
        try:
            plan = build_plan(run_config, _mpi_install(), python=sys.executable, euid=os.geteuid(),
                              private_dir=str(Path(private_dir).absolute()),
                              check_dir=_check_dir(run_config.working_dir), cpu_count=os.cpu_count())
            if emulated is not None:
                from asyncddp.launcher.emulate import emulate_plan

                plan = emulate_plan(plan, emulated, cpu_count=os.cpu_count())
            if dry_run:
                if as_json:
                    data = {**plan.to_dict(), **({"emulate": emulated.to_dict()} if emulated else {})}
                    typer.echo(json.dumps(data, indent=2))
                else:
                    typer.echo((emulated.describe() + "\n\n" if emulated else "") + format_plan(plan))
                return
            from asyncddp.launcher.job import run_plan

            if emulated is None:
                _preflight(run_config, preflight)
                result = run_plan(plan, output_dir=output_dir, timeout=run_config.timeout)
            else:
                from asyncddp.launcher.emulate import emulated_cluster

                with emulated_cluster(emulated):
                    result = run_plan(plan, output_dir=output_dir, timeout=run_config.timeout)
        finally:
            if not output_dir:
                shutil.rmtree(private_dir, ignore_errors=True)
        if result.summary:
            print(result.summary, file=sys.stderr)
        raise typer.Exit(result.exit_code)
