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
    "RankLostError",
    "OptimizerError",
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


class RankLostError(CommError):
    """Ranks of the job died and the survivors closed ranks (fault-tolerant jobs only).

    Raised once per loss by the op that met it (and by every op issued on the old world before
    the error reached the program), on every survivor, after the world was rebuilt: ``rank()``,
    ``size()`` and the topology already describe the survivors. ``lost_ranks`` are ranks of the
    job as it was launched (original numbering), ``world_version`` counts the losses so far.
    """

    def __init__(self, lost_ranks, world_version: int, new_size: int) -> None:
        self.lost_ranks = tuple(sorted(lost_ranks))
        self.world_version = world_version
        self.new_size = new_size
        super().__init__(
            f"lost rank(s) {list(self.lost_ranks)} of the original job; the {new_size} survivors "
            f"continue (world version {world_version})"
        )


class OptimizerError(AsyncDDPError, ValueError):
    """A distributed optimizer was built with invalid arguments or used out of order (a model it
    cannot wrap, a bad ``bucket_mb``, ``step()`` after ``free()``)."""


class TopologyError(AsyncDDPError, ValueError):
    """A topology does not fit the job (wrong number of nodes, bad weights)."""
