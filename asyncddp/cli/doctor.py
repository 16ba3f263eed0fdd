"""``asyncddp doctor``: check every node over SSH in parallel and print a table of the results.

Thin layer: turns --hostfile / -H / --config into ``HostSpec``s, calls ``run_doctor`` and prints the
``DoctorReport`` (``asyncddp.doctor.render``'s table and one-line verdict, or ``--json``). Exit code
0 all ok, 1 warnings only, 2 failures.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

from asyncddp.errors import ConfigError


def load_hosts(hostfile: Path | None, hosts: str | None, config: Path | None):
    """(hosts, known_hosts from the config) from at most one of the three host sources, else the
    Slurm allocation we run in, else (None, None) for localhost."""
    given = [name for name, value in (("--hostfile", hostfile), ("-H", hosts), ("--config", config))
             if value is not None]
    if len(given) > 1:
        raise ConfigError(f"give only one of --hostfile, -H, --config (got {' and '.join(given)})")
    if hostfile is not None:
        from asyncddp.launcher.hosts import parse_hostfile

        return parse_hostfile(hostfile), None
    if hosts is not None:
        from asyncddp.launcher.hosts import parse_host_list

        return parse_host_list(hosts), None
    if config is not None:
        from asyncddp.launcher.config import load_config

        cluster = load_config(config)
        # A host without its own python: uses the config's default interpreter, as run does.
        hosts_ = [replace(host, python=host.python or cluster.python) for host in cluster.hosts]
        return hosts_, cluster.ssh.known_hosts
    from asyncddp.launcher.slurm import in_slurm_allocation, slurm_hosts

    if in_slurm_allocation():  # as `run` does: inside an allocation its nodes are the cluster
        return slurm_hosts(), None
    return None, None


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_command(
        hostfile: Path = typer.Option(None, "--hostfile", help="Open MPI hostfile (host slots=N)."),
        hosts: str = typer.Option(None, "-H", "--host", help="Hosts as a:4,b:2."),
        config: Path = typer.Option(None, "--config", help="YAML cluster config."),
        known_hosts: Path = typer.Option(None, "--known-hosts", help="known_hosts file to verify host keys against (default: ~/.ssh/known_hosts)."),
        accept_new_host_keys: bool = typer.Option(False, "--accept-new-host-keys", help="Accept and record unknown host keys (changed keys are always refused)."),
        timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Seconds allowed for each SSH stage."),
        probe_timeout: float = typer.Option(180.0, "--probe-timeout", min=1, help="Seconds allowed for the probe on each node."),
        as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
    ) -> None:
        """Check every node (SSH, Python, torch, GPUs, MPI, network) and compare them."""
        from asyncddp.doctor import DoctorOptions, SshOptions, run_doctor

        host_list, config_known_hosts = load_hosts(hostfile, hosts, config)
        ssh = SshOptions(
            known_hosts=str(known_hosts) if known_hosts else config_known_hosts,
            accept_new_host_keys=accept_new_host_keys,
            timeout=timeout,
        )
        report = run_doctor(host_list, DoctorOptions(ssh=ssh, probe_timeout=probe_timeout))
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            from asyncddp.doctor.render import render

            render(report)
        raise typer.Exit(report.exit_code)
