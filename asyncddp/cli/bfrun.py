"""``bfrun`` and ``ibfrun``: BlueFog's launchers, spelled as BlueFog's README and lecture spell them.

Each parses BlueFog's own flags and hands one ``asyncddp`` command line to ``asyncddp.cli.main``, so
jobs start, fail and stop exactly as under ``asyncddp run``:

- ``bfrun -np 4 [python] train.py ARGS`` is ``asyncddp run -np 4 -m asyncddp.compat.run_bluefog
  train.py ARGS`` (the ``bluefog`` import alias installed on every rank). ``python -m module`` and an
  installed Python program (``bfrun -np 4 pytest test/x.py``) get the alias too; any other command
  runs as it is. ``-H``, ``--hostfile``, ``-p/--ssh-port``, ``--network-interface``,
  ``--use-infiniband``, ``--extra-mpi-flags`` and ``--timeline-filename`` keep BlueFog's meaning;
  ``--prefix DIR/`` picks ``DIR/mpirun``; ``--verbose`` sets ``BLUEFOG_LOG_LEVEL=debug``.
- ``ibfrun start -np 4 [...]`` is ``asyncddp ipy start`` (profile ``bluefog``, as BlueFog's),
  ``ibfrun stop`` is ``asyncddp ipy stop``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from asyncddp import __version__

__all__ = ["bfrun_command", "ibfrun_command", "bfrun_main", "ibfrun_main"]

_PYTHON = re.compile(r"python(\d+(\.\d+)?)?$")
ALIAS = ("-m", "asyncddp.compat.run_bluefog")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every asyncddp error
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _host_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-np", "--num-proc", dest="np", type=int, help="Total number of processes.")
    parser.add_argument("-p", "--ssh-port", dest="ssh_port", type=int, help="SSH port on all the hosts.")
    parser.add_argument("--network-interface", dest="nic", help="Network interface (or subnet) for communication.")
    hosts = parser.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", "--host", dest="hosts", help="host1:2,host2:4 (host:slots,...).")
    hosts.add_argument("-hostfile", "--hostfile", dest="hostfile", help="Hostfile of 'host slots=N' lines.")
    parser.add_argument("--use-infiniband", action="store_true", help="Open MPI's UCX transport (--mca pml ucx).")
    parser.add_argument("--extra-mpi-flags", dest="extra_flags", help="Extra mpirun flags, one quoted string.")
    parser.add_argument("--verbose", action="store_true", help="BLUEFOG_LOG_LEVEL=debug on every rank.")


def _launch_args(args: argparse.Namespace) -> list[str]:
    """The asyncddp launch flags for BlueFog's host, network and MPI flags."""
    out: list[str] = []
    pairs = (("-np", args.np), ("-H", args.hosts), ("--hostfile", args.hostfile), ("-p", args.ssh_port),
             ("--network-interface", args.nic), ("--mpi-args", args.extra_flags))
    for flag, value in pairs:
        if value is not None:
            out += [flag, str(value)]
    if args.use_infiniband:
        out.append("--use-infiniband")
    if args.verbose:
        out += ["-x", "BLUEFOG_LOG_LEVEL=debug"]
    return out


def _is_python_program(path: str) -> bool:
    """An installed program whose first line runs Python (pytest, a console script)."""
    try:
        with open(path, "rb") as file:
            first = file.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def rank_command(command: list[str]) -> list[str]:
    """What each rank runs for bfrun's COMMAND: BlueFog's Python programs under the alias."""
    if command and _PYTHON.match(Path(command[0]).name):
        command = command[1:]  # "bfrun -np 4 python train.py": the ranks' Python is asyncddp's choice
        if not command:
            raise SystemExit("bfrun: error: 'python' needs a script or -m module; see bfrun --help")
        if command[0] == "-m":
            return [*ALIAS, *command]
        if command[0].startswith("-"):
            return [sys.executable, *command]  # python -c CODE and other interpreter flags: as given
    if not command:
        raise SystemExit("bfrun: error: no command to run: bfrun -np 4 python train.py ARGS")
    head = command[0]
    if head.endswith(".py"):
        if not os.path.isfile(head):  # else every rank would say so, after the job started
            raise SystemExit(f"bfrun: error: script {head} not found (looked in {os.getcwd()}); check the path")
        return [*ALIAS, *command]
    program = head if os.sep in head else shutil.which(head)
    if program and _is_python_program(program):
        return [*ALIAS, program, *command[1:]]
    return command


def bfrun_command(argv: list[str]) -> list[str]:
    """The ``asyncddp`` argv for a ``bfrun`` command line (exits 2 with one line on bad flags)."""
    parser = _Parser(prog="bfrun", description="BlueFog's launcher over asyncddp run.")
    parser.add_argument("-v", "--version", action="store_true", help="Print the version.")
    _host_flags(parser)
    parser.add_argument("--timeline-filename", help="Write the communication timeline to this file.")
    parser.add_argument("--prefix", default="", help="A prefix before mpirun: --prefix /opt/ompi/bin/.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="[python] SCRIPT.py ARGS, or a command.")
    args = parser.parse_args(argv)
    if args.version:
        return ["--version"]
    if args.prefix:
        mpirun = f"{args.prefix}mpirun"  # BlueFog joins them as text: "--prefix /opt/bin/" -> /opt/bin/mpirun
        if not os.access(mpirun, os.X_OK):
            raise SystemExit(f"bfrun: error: --prefix {args.prefix}: no mpirun at {mpirun}; "
                             "give the folder of mpirun ending in /")
        os.environ["ASYNCDDP_MPIRUN"] = mpirun
    out = ["run", *_launch_args(args)]
    if args.timeline_filename:
        out += ["--timeline-filename", args.timeline_filename]
    return [*out, *rank_command(args.command)]


def ibfrun_command(argv: list[str]) -> list[str]:
    """The ``asyncddp`` argv for an ``ibfrun start|stop`` command line."""
    parser = _Parser(prog="ibfrun", description="BlueFog's interactive launcher over asyncddp ipy.")
    parser.add_argument("-v", "--version", action="store_true", help="Print the version.")
    actions = parser.add_subparsers(dest="action", parser_class=_Parser)
    start = actions.add_parser("start", help="Start the controller and the MPI engines.")
    _host_flags(start)
    start.add_argument("--ipython-profile", dest="profile", default="bluefog", help="ipyparallel profile.")
    start.add_argument("--enable-heartbeat", action="store_true",
                       help="Accepted for BlueFog's command lines; engines keep ipyparallel's heartbeat.")
    stop = actions.add_parser("stop", help="Stop the engines and the controller.")
    stop.add_argument("--ipython-profile", dest="profile", default="bluefog", help="ipyparallel profile.")
    args = parser.parse_args(argv)
    if args.version:
        return ["--version"]
    if args.action is None:
        parser.error("say start or stop (ibfrun start -np 4, ibfrun stop)")
    if args.action == "stop":
        return ["ipy", "stop", "--profile", args.profile]
    if args.np is None:
        start.error("the following arguments are required: -np/--num-proc")
    return ["ipy", "start", *_launch_args(args), "--profile", args.profile]


def bfrun_main() -> None:
    from asyncddp.cli.main import main

    main(bfrun_command(sys.argv[1:]))


def ibfrun_main() -> None:
    from asyncddp.cli.main import main

    main(ibfrun_command(sys.argv[1:]))
