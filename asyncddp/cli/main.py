"""Entry point of the ``asyncddp`` command: builds the Typer app and owns the one error path.

Each command lives in its own module under ``asyncddp/cli/`` and exposes ``register(app)``. Errors
the user can cause arrive here as ``AsyncDDPError`` (or as Typer's usage errors) and leave as one
line on stderr with a non-zero exit code, plus a JSON document on stdout when the command was
asked for ``--json`` (``json_errors``); ``--debug`` (or ``ASYNCDDP_DEBUG=1``) shows the traceback.
A command stopped by SIGINT, SIGTERM or SIGHUP before or after its job (``Stopped``) leaves the
same way, with the shell's exit code for that signal (128+signal).
"""

from __future__ import annotations

import os
import sys

import typer

from asyncddp import __version__
from asyncddp.errors import AsyncDDPError
from asyncddp.launcher.stop_signals import Stopped

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
    # One module per command; each adds itself to the app, once: main runs many times in one process
    # under the tests, and each added copy would make every later call build the whole CLI again.
    if app.registered_commands or app.registered_groups:
        return
    from asyncddp.cli import commands

    for module in commands.MODULES:
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its status; errors leave as one line on stderr (and, for a
    ``--json`` command, as a JSON document on stdout)."""
    from typer import rich_utils
    from typer.core import HAS_RICH

    from asyncddp.cli.json_errors import StdoutWatch, json_requested, print_error_document

    _register_commands()
    args = sys.argv[1:] if argv is None else list(argv)
    watch, stdout = None, sys.stdout
    if "--json" in args and json_requested(typer.main.get_command(app), args):
        watch = sys.stdout = StdoutWatch(sys.stdout)
    try:
        code = app(args=args, standalone_mode=False)
    except typer.TyperException as error:  # a usage error: unknown flag, bad value (what Typer shows itself)
        rich_utils.rich_format_error(error) if HAS_RICH else error.show()
        print_error_document(watch, error.format_message(), error.exit_code, "UsageError")
        sys.exit(error.exit_code)
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    except AsyncDDPError as error:
        if _debug:
            raise
        print(f"asyncddp: error: {error}", file=sys.stderr)
        print_error_document(watch, str(error), error.exit_code, type(error).__name__)
        sys.exit(error.exit_code)
    except Stopped as stopped:
        try:  # after SIGHUP the terminal may be gone; the exit code must still be the signal's
            print(f"asyncddp: {stopped}", file=sys.stderr, flush=True)
            print_error_document(watch, str(stopped), stopped.code, "Stopped")
        except OSError:
            pass
        sys.exit(stopped.code)
    finally:
        sys.stdout = stdout
    sys.exit(code if isinstance(code, int) else 0)
