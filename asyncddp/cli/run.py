"""``asyncddp run``: launch a script, module or command on every rank through mpirun.

Thin layer: flags (the shared launch flags of ``asyncddp.cli.launch_flags`` plus run's own) ->
``RunOptions``; ``plan_job`` applies the config file, finds the MPI and makes
the mpirun command; ``--dry-run`` prints it, otherwise ``check_ssh`` and ``run_plan`` run it and its
exit code becomes ours. Everything after the script (or ``-m module``, or a command) goes to the
ranks untouched: click stops parsing at the first positional argument. From the first step on,
SIGINT, SIGTERM and SIGHUP stop the job and remove what this run made (``stop_signals``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import typer

from asyncddp.cli import launch_flags as flags


def register(app: typer.Typer) -> None:
    @app.command(
        "run",
        context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    )
    @flags.with_launch_flags
    def run_command(
        command: list[str] = typer.Argument(None, metavar="SCRIPT.py [ARGS] | -m MODULE [ARGS] | COMMAND [ARGS]",
                                            help="What every rank runs."),
        num_ranks: int = typer.Option(None, "-np", "--np", "-n", help="Number of ranks."),
        network: str = typer.Option(None, "--network-interface", help="Interface name or CIDR subnet for MPI traffic."),
        output_dir: str = typer.Option(None, "--output-dir",
                                       help="Also write each rank's output to DIR/run-<start time>/rank.N.log, "
                                            "a new folder per run (DIR/latest: the newest)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the mpirun command and rank map; run nothing."),
        as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the plan as JSON."),
        timeline: str = typer.Option(None, "--timeline", "--timeline-filename", envvar="ASYNCDDP_TIMELINE",
                                     show_envvar=False, help="Ranks write a communication timeline to PATH."),
        ssh_port: int = typer.Option(None, "-p", "--ssh-port", help="ssh port for hosts that set none (bfrun's -p)."),
        use_infiniband: bool = typer.Option(False, "--use-infiniband",
                                            help="bfrun's flag: use Open MPI's UCX transport (--mca pml ucx)."),
        preflight: bool = typer.Option(
            None, "--preflight/--no-preflight",
            help="Check SSH to every remote host before starting mpirun (default: on when any host is remote)."),
        fault_tolerant: bool = typer.Option(
            None, "--fault-tolerant/--no-fault-tolerant",
            help="A rank that dies no longer ends the job: the others go on (Open MPI 5 with ULFM)."),
        min_ranks: int = typer.Option(None, "--min-ranks",
                                      help="With --fault-tolerant: fail the job when fewer ranks finish."),
        max_restarts: int = typer.Option(None, "--max-restarts",
                                         help="Relaunch the whole job after a failure, at most K times."),
        launch=None,
    ) -> None:
        """Run a script, -m module or command on every rank: asyncddp run -np 4 train.py ARGS..."""
        from asyncddp.launcher import stop_signals
        from asyncddp.launcher.prepare import check_ssh, job_running, plan_job

        options = replace(launch, command=tuple(command or ()), num_ranks=num_ranks, network=network,
                          output_dir=output_dir, timeline=timeline, ssh_port=ssh_port, use_infiniband=use_infiniband,
                          fault_tolerant=fault_tolerant, min_ranks=min_ranks, max_restarts=max_restarts)
        # The private ssh_config and library links live in a 0700 directory of this run alone,
        # removed when the job ends; the output directory holds logs only.
        with stop_signals.private_dir(f"asyncddp-{os.getuid()}-") as private_dir:
            job = plan_job(options, private_dir)
            if dry_run:
                typer.echo(json.dumps(job.to_dict(), indent=2) if as_json else job.describe())
                return
            check_ssh(job, preflight)
            if job.config.fault_tolerant:
                from asyncddp.launcher.mpi import check_fault_tolerance

                check_fault_tolerance(job.plan.argv[0])
            from asyncddp.launcher.log_dir import new_log_dir
            from asyncddp.launcher.restart import run_with_restarts

            logs = new_log_dir(output_dir) if output_dir else None
            if logs:
                _say(f"asyncddp: this run's logs: {logs}/")
            with job_running(job):
                result = run_with_restarts(job.plan, job.config.max_restarts, output_dir=logs,
                                           timeout=job.config.timeout)
        if result.summary:
            _say(result.summary)
        raise typer.Exit(result.exit_code)


def _say(line: str) -> None:
    # After SIGHUP the terminal may be gone; the exit code must still be the signal's.
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass
