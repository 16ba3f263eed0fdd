"""Entry point of the ``asyncddp`` command: builds the Typer app and owns the one error path.

Each command lives in its own module under ``asyncddp/cli/`` and exposes ``register(app)``. Errors
the user can cause arrive here as ``AsyncDDPError`` and leave as one line on stderr with a non-zero
exit code; ``--debug`` (or ``ASYNCDDP_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from asyncddp import __version__
from asyncddp.errors import AsyncDDPError

app = typer.Typer(
    name="asyncddp",
    help="Launch and run decentralized and asynchronous data-parallel PyTorch jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = os.environ.get("ASYNCDDP_DEBUG", "") not in ("", "0")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asyncddp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    global _debug
    _debug = _debug or debug


def _register_commands() -> None:
    # One module per command; each adds itself to the app.
    from asyncddp.cli import commands

    for module in commands.MODULES:
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its status (Typer exits for usage errors itself)."""
    _register_commands()
    try:
        app(args=argv)
    except AsyncDDPError as error:
        if _debug:
            raise
        print(f"asyncddp: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
