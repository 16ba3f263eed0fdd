"""The list of command modules the ``asyncddp`` app is built from; each exposes ``register(app)``."""

from __future__ import annotations

from asyncddp.cli import bench, doctor, ipy, run, topology, version

# Add a command by writing asyncddp/cli/<name>.py with register(app) and listing it here.
# The order is the order of `asyncddp --help`.
MODULES = (run, doctor, topology, bench, ipy, version)
