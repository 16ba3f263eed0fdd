"""What every ``asyncddp bench`` sub-command shares: the ``bench`` Typer app they register on, the
``--plot`` path check, the progress bar and the report (table or ``--json``, then the verdict).
``asyncddp.cli.bench`` and ``asyncddp.cli.bench_converge`` both import it."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import typer

from asyncddp.errors import ConfigError

bench_app = typer.Typer(help="Benchmarks: communication ops in nccl-tests form (comm), training throughput per "
                        "method (resnet18, resnet50, vgg16, mobilenet_v3, transformer, mlp; with --kill-rank, "
                        "surviving a lost rank), a slow rank (straggler).",
                        no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def _check_plot_path(path: str | None) -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not path.lower().endswith(".png"):
        raise ConfigError(f"--plot {path}: give a .png file name")
    if os.path.exists(path) and not os.path.isfile(path):  # found only after the whole bench ran
        raise ConfigError(f"--plot {path}: exists and is not a file; give a file name")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ConfigError(f"--plot {path}: directory {parent} does not exist or is not writable")


@contextlib.contextmanager
def _progress_bar(description: str, total: int, quiet: bool):
    """A transient progress bar on stderr; yields ``update(done, description)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=quiet) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done, text: progress.update(task, completed=done, description=text)


def _print_table(table) -> None:
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 140).print(table)


def _report(result, as_json: bool, table, plot: str | None = None, draw=None, *, what: str) -> None:
    """Print ``result`` as JSON or as ``table(result)``; with ``plot``, ``draw(result, plot)`` too.
    Then fail (``outcome.RunsFailed``, naming ``what``) when any run it was asked for failed."""
    from asyncddp.bench import outcome

    if as_json:
        typer.echo(json.dumps(outcome.document(result), indent=2))
    else:
        _print_table(table(result))
    if plot:
        draw(result, plot)
        print(f"plot written to {plot}", file=sys.stderr)
    outcome.check(result, what)
