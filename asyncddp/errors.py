"""The one error path of asyncddp.

Every failure a user can cause (bad hostfile, bad YAML, too many ranks, a misused op) raises an
``AsyncDDPError`` subclass whose message names the file, line or flag and says how to fix it. The
CLI turns these into one line on stderr and a non-zero exit code; library users catch them.
"""

from __future__ import annotations

__all__ = [
    "AsyncDDPError",
    "ConfigError",
    "HostfileError",
    "LaunchError",
    "NotInitializedError",
    "CommError",
    "TopologyError",
]


class AsyncDDPError(Exception):
    """Base class for every error asyncddp raises on purpose.

    ``exit_code`` is what the CLI exits with when this error reaches it.
    """

    exit_code: int = 2


class ConfigError(AsyncDDPError):
    """A YAML cluster config, a CLI flag or an environment variable is invalid."""


class HostfileError(ConfigError):
    """A hostfile or ``-H`` host list is invalid."""


class LaunchError(AsyncDDPError):
    """A job could not be started (no mpirun, too many ranks for the slots, missing script)."""


class NotInitializedError(AsyncDDPError):
    """A communication function was called before ``asyncddp.init()``."""


class CommError(AsyncDDPError):
    """A communication op was misused: mismatched shapes, unknown ranks, unmatched sends."""


class TopologyError(AsyncDDPError, ValueError):
    """A topology does not fit the job (wrong number of nodes, bad weights)."""
