"""``asyncddp ipy start|stop|status``: the interactive (Jupyter / ipyparallel) cluster.

Thin layer over ``asyncddp.launcher.interactive``: parse flags, call one function, print one line (or
``--json``). ipyparallel is imported only when a sub-command runs.
"""

from __future__ import annotations

import json
from dataclasses import replace

import typer

from asyncddp.cli import launch_flags as flags
from asyncddp.errors import ConfigError

ipy_app = typer.Typer(help="Interactive mode: an ipyparallel controller plus MPI engines (BlueFog's ibfrun).",
                      no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})

_PROFILE = typer.Option("asyncddp", "--profile", help="ipyparallel profile name (directory $IPYTHONDIR/profile_NAME).")
_JSON = typer.Option(False, "--json", help="Print the status as JSON.")


def _show(status, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(status.to_dict(), indent=2) if as_json else text)


@ipy_app.command("start")
def start_command(
    num_ranks: int = typer.Option(..., "-np", "--num-ranks", help="Number of engines (MPI ranks)."),
    hostfile: str = flags.HOSTFILE,
    hosts: str = flags.HOSTS,
    config: str = flags.CONFIG,
    env: list[str] = flags.ENV,
    mpi_args: str = flags.MPI_ARGS,
    oversubscribe: bool = flags.OVERSUBSCRIBE,
    network: str = typer.Option(None, "--network-interface", help="Interface name or CIDR subnet for MPI traffic."),
    ssh_port: int = typer.Option(None, "-p", "--ssh-port", help="ssh port for hosts that set none (ibfrun's -p)."),
    use_infiniband: bool = typer.Option(False, "--use-infiniband",
                                        help="ibfrun's flag: use Open MPI's UCX transport (--mca pml ucx)."),
    profile: str = _PROFILE,
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for every engine to register."),
    as_json: bool = _JSON,
) -> None:
    """Start the controller and -np engines; returns when all registered."""
    from asyncddp.launcher import interactive

    if num_ranks < 1:
        raise ConfigError(f"-np {num_ranks}: give at least 1 engine")
    if timeout <= 0:
        raise ConfigError(f"--timeout {timeout}: give a positive number of seconds")
    launch = flags.launch_options({"hostfile": hostfile, "hosts": hosts, "config": config, "env": env,
                                   "mpi_args": mpi_args, "oversubscribe": oversubscribe})
    launch = replace(launch, network=network, ssh_port=ssh_port, use_infiniband=use_infiniband)
    status = interactive.start(num_ranks, profile, launch=launch, timeout=timeout)
    _show(status, as_json, f"started {status.num_engines} engines (profile {profile}); in Python: "
          f"ipyparallel.Client(profile={profile!r}), or %%px cells after "
          f"rc = ipyparallel.Client(profile={profile!r}); rc[:].activate()")


@ipy_app.command("stop")
def stop_command(profile: str = _PROFILE, as_json: bool = _JSON) -> None:
    """Stop the engines and the controller of the profile."""
    from asyncddp.launcher import interactive

    status = interactive.stop(profile)
    if status.all_stale:
        text = (f"nothing of profile {profile} was running: its record was stale (pid(s) {_pids(status)} "
                "ended or now belong to other processes, which were left alone); removed it")
    else:
        text = f"stopped the interactive cluster of profile {profile}"
        if status.stale:
            text += f" (recorded pid(s) {_pids(status)} were stale and left alone)"
    _show(status, as_json, text)


@ipy_app.command("status")
def status_command(profile: str = _PROFILE, as_json: bool = _JSON) -> None:
    """Say whether the profile's cluster runs, and with how many engines."""
    from asyncddp.launcher import interactive

    interactive.require_ipyparallel()
    status = interactive.status(profile)
    if status.running:
        text = f"running: {status.num_engines} engines (profile {profile}, controller pid {status.controller_pid})"
    elif status.all_stale:
        text = (f"not running (profile {profile}): its record was stale (pid(s) {_pids(status)} ended or now "
                "belong to other processes); removed it")
    elif status.stale:
        text = (f"not running (profile {profile}): recorded pid(s) {_pids(status)} ended or now belong to other "
                f"processes; asyncddp ipy stop --profile {profile} ends the rest")
    else:
        text = f"not running (profile {profile})"
    _show(status, as_json, text)


def _pids(status) -> str:
    return ", ".join(str(pid) for pid in status.stale_pids)


def register(app: typer.Typer) -> None:
    app.add_typer(ipy_app, name="ipy")
