"""The launch flags every command that starts ranks accepts, declared once.

``@with_launch_flags`` adds ``--hostfile``, ``-H``, ``--config``, ``-x``, ``--mpi-args``,
``--oversubscribe``, ``--timeout``, ``--emulate`` and ``--master-port`` to a Typer command (``asyncddp run`` and each ``asyncddp bench``
command) and hands them to it as one ``launch: RunOptions``, the input of
``asyncddp.launcher.prepare.plan_job``; so they are spelled, explained and checked the same
everywhere. ``asyncddp ipy start`` reuses the single option objects it shares.
"""

from __future__ import annotations

import functools
import inspect

import typer


HOSTFILE = typer.Option(None, "--hostfile", help="Open MPI hostfile (host slots=N).")
HOSTS = typer.Option(None, "-H", "--host", help="Hosts, e.g. a:4,b:4.")
CONFIG = typer.Option(None, "--config", help="YAML cluster config (see configs/).")
ENV = typer.Option(None, "-x", help="Forward NAME, NAME=value or a glob like NCCL_*; repeatable.")
MPI_ARGS = typer.Option(None, "--mpi-args", "--extra-mpi-flags", help="Extra mpirun arguments, one quoted string.")
OVERSUBSCRIBE = typer.Option(False, "--oversubscribe", help="Allow more ranks than slots.")
TIMEOUT = typer.Option(None, "--timeout", help="Kill the ranks after this many seconds (run then exits 124).")
EMULATE = typer.Option(None, "--emulate",
                       help="Run on an emulated cluster on this machine (root and iproute2): "
                            "nodes=N[,ranks_per_node=K][,bandwidth=RATE][,latency=T][,loss=P][,slow_node=I:RATE].")
MASTER_PORT = typer.Option(None, "--master-port",
                           help="torchrun's MASTER_PORT for every rank (default: a free port chosen per job).")

# (parameter, type, option, RunOptions field)
_FLAGS = (
    ("hostfile", str, HOSTFILE, "hostfile"),
    ("hosts", str, HOSTS, "host_list"),
    ("config", str, CONFIG, "config"),
    ("env", list[str], ENV, "env"),
    ("mpi_args", str, MPI_ARGS, "mpi_args"),
    ("oversubscribe", bool, OVERSUBSCRIBE, "oversubscribe"),
    ("timeout", float, TIMEOUT, "timeout"),
    ("emulate", str, EMULATE, "emulate"),
    ("master_port", int, MASTER_PORT, "master_port"),
)


def launch_options(values: dict):
    """The ``RunOptions`` of the shared flags' values (by parameter name); ``merge_run_config``
    checks them before anything starts."""
    from asyncddp.launcher.run_config import RunOptions

    fields = {field: values.get(name) for name, _, _, field in _FLAGS}
    fields["env"] = tuple(fields["env"] or ())
    fields["oversubscribe"] = bool(fields["oversubscribe"])
    return RunOptions(**fields)


def with_launch_flags(command):
    """Give ``command`` (which takes ``launch``) the shared flags as Typer options."""
    signature = inspect.signature(command, eval_str=True)
    own = [param for name, param in signature.parameters.items() if name != "launch"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
              for name, kind, option, _ in _FLAGS]

    @functools.wraps(command)
    def wrapper(**values):
        launch = launch_options({name: values.pop(name) for name, _, _, _ in _FLAGS})
        return command(**values, launch=launch)

    wrapper.__signature__ = signature.replace(parameters=[
        param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for param in own] + shared)
    wrapper.__annotations__ = {param.name: param.annotation for param in wrapper.__signature__.parameters.values()}
    del wrapper.__wrapped__  # Typer must read the signature above, not the command's own
    return wrapper
