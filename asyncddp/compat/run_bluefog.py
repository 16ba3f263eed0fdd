"""Run a BlueFog script unchanged: ``python -m asyncddp.compat.run_bluefog script.py ARGS...``.

Installs the ``bluefog`` import alias (see ``asyncddp.compat``), then runs the script as
``__main__`` with ``sys.argv`` set to the script and its arguments, as ``python script.py`` would
(``-m module ARGS`` runs a module, as ``python -m module`` would).
Under ``asyncddp run -np N -m asyncddp.compat.run_bluefog script.py`` every rank does this.
"""

from __future__ import annotations

import os
import runpy
import sys

from asyncddp.compat import install_bluefog_alias


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help") or argv == ["-m"]:
        print("usage: python -m asyncddp.compat.run_bluefog SCRIPT.py [ARGS...] | -m MODULE [ARGS...]",
              file=sys.stderr)
        raise SystemExit(2)
    if argv[0] == "-m":
        install_bluefog_alias()
        sys.argv = list(argv[1:])
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    script = argv[0]
    if not os.path.isfile(script):
        print(f"asyncddp.compat.run_bluefog: error: {script} does not exist", file=sys.stderr)
        raise SystemExit(2)
    install_bluefog_alias()
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
