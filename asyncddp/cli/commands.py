"""The list of command modules the ``asyncddp`` app is built from; each exposes ``register(app)``."""

from __future__ import annotations

from asyncddp.cli import version
from asyncddp.cli import doctor
from asyncddp.cli import topology
from asyncddp.cli import run

# Add a command by writing asyncddp/cli/<name>.py with register(app) and listing it here.
MODULES = (version, doctor, topology, run,)
