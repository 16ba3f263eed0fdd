"""The ``asyncddp`` command as the tests run it, in one place.

``asyncddp`` runs the real entry point (``python -m asyncddp`` with this interpreter) in a subprocess:
for anything where the real process matters (launches, signals, exit codes of the entry point, what
reaches the real stdout). ``invoke`` runs the same ``main`` in this process with its streams captured
through Typer's ``CliRunner``: for option checks that end before any job starts, where a subprocess
only adds its start-up time. Both return a ``CompletedProcess`` so a test reads them the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def asyncddp_argv(*args: str) -> list[str]:
    """The real CLI entry point, run by this interpreter (works without PATH)."""
    return [sys.executable, "-m", "asyncddp", *args]


def cli_env(env: Mapping[str, str] | None = None, unset: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment, with ``env`` added and the names in ``unset`` removed."""
    merged = {**os.environ, **(env or {})}
    for name in unset:
        merged.pop(name, None)
    return merged


def asyncddp(*args: str, cwd: Path | str = ROOT, timeout: float = 60, env: Mapping[str, str] | None = None,
             unset: Iterable[str] = ()) -> subprocess.CompletedProcess:
    """Run ``asyncddp *args`` to its end, stdin closed, output captured as text.

    The result's ``pid`` names the launcher process (emulated clusters name their namespaces after
    it). A timeout means the command hung: it is killed and ``TimeoutExpired`` raised, as
    ``subprocess.run`` does."""
    process = subprocess.Popen(asyncddp_argv(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL, env=cli_env(env, unset))
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    done.pid = process.pid
    return done


def invoke(*args: str, cwd: Path | str = ROOT, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``asyncddp *args`` in this process: ``main`` with stdin empty and stdout/stderr captured.

    Only for commands that stop before starting anything (option and input validation, dry runs):
    the exit code, stdout and stderr are the ones the real command gives. COLUMNS is fixed at 80, the
    width a subprocess writing to a pipe gets, so usage errors wrap the same way."""
    from typer.testing import CliRunner

    from asyncddp.cli.main import main

    runner = CliRunner()
    code, before = 0, os.getcwd()
    with runner.isolation(env={"COLUMNS": "80", **(env or {})}) as streams:
        os.chdir(cwd)
        try:
            main(list(args))
        except SystemExit as ended:
            code = ended.code if isinstance(ended.code, int) else (0 if ended.code is None else 1)
        finally:
            os.chdir(before)
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = streams[0].getvalue(), streams[1].getvalue()
    return subprocess.CompletedProcess(["asyncddp", *args], code, stdout.decode(), stderr.decode())
