"""Errors of a ``--json`` command as JSON on stdout, so a script reading stdout always gets a document.

A command run with ``--json`` promises one JSON document on stdout, failure included. An error the
user causes (bad hostfile, bad flag value) ends the command before it prints anything, so the
entry point prints ``{"status": "error", "exit_code": 2, "error": "..."}`` in its place, next to the
usual one line on stderr. Whether ``--json`` was asked for is read the way the command line parser
reads it, so ``asyncddp run train.py --json`` (a flag of the script) does not count. A command that
already printed its result and then fails (``bench comm --json`` with wrong values) has said what
failed in that result: nothing more is printed, keeping stdout one document.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["json_requested", "StdoutWatch", "error_document", "print_error_document"]


def json_requested(command: Any, args: list[str]) -> bool:
    """Whether ``args`` ask the leaf sub-command of ``command`` (a click command) for ``--json``.

    Parses without callbacks or errors (click's resilient parsing, as shell completion does); a
    line naming no sub-command that exists (``bench NOSUCHMODEL --json``), or one the parser cannot
    read, falls back to a plain search for ``--json``: no command will run to own the flag.
    """
    from typer.core import TyperGroup

    try:
        ctx = command.make_context("asyncddp", list(args), resilient_parsing=True)
        while isinstance(ctx.command, TyperGroup):
            rest = [*ctx._protected_args, *ctx.args]
            name, sub, rest = ctx.command.resolve_command(ctx, rest) if rest else (None, None, [])
            if sub is None:  # no such command (or none given): nothing runs, so no script owns the flag
                return "--json" in args
            ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=True)
        flags = [param.name for param in ctx.command.params if "--json" in getattr(param, "opts", ())]
        return any(ctx.params.get(name) for name in flags)
    except Exception:  # the parser's own failure on a line it cannot read: the cheap guess will do
        return "--json" in args


class StdoutWatch:
    """``sys.stdout`` that remembers whether anything was written through it."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.written = False

    def write(self, text):
        if text:
            self.written = True
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def error_document(message: str, exit_code: int, kind: str) -> str:
    """The JSON a ``--json`` command prints for an error: ``status`` and ``exit_code`` as its reports have."""
    return json.dumps({"status": "error", "exit_code": exit_code, "error": message, "error_type": kind}, indent=2)


def print_error_document(watch: StdoutWatch | None, message: str, exit_code: int, kind: str) -> None:
    """Print the error document when ``--json`` was asked for and nothing is on stdout yet."""
    if watch is not None and not watch.written:
        print(error_document(message, exit_code, kind), file=sys.stdout, flush=True)
