"""Telling a dead peer from any other MPI error: the leaf the exchange paths and the engine share.

``recovery`` runs the protocol once a failure is seen; this module only names one
(``is_failure``, ``PeerFailure``) and says whether the job is fault tolerant (``enabled``), so
that ``p2p`` and ``engine`` need not import the protocol that in turn uses them.
"""

from __future__ import annotations

from asyncddp.comm.env import env_flag

__all__ = ["FAULT_TOLERANT_ENV", "enabled", "is_failure", "PeerFailure"]

FAULT_TOLERANT_ENV = "ASYNCDDP_FAULT_TOLERANT"


class PeerFailure(Exception):
    """A p2p exchange met a failed peer; ``requests`` are still posted and are completed by
    ``recover`` once the communicator is revoked (their buffers must stay alive until then)."""

    def __init__(self, error, requests) -> None:
        super().__init__(str(error))
        self.error = error
        self.requests = list(requests)


def enabled() -> bool:
    """Whether this rank runs fault tolerant (``ASYNCDDP_FAULT_TOLERANT``, default off)."""
    return bool(env_flag(FAULT_TOLERANT_ENV, False))


def _failure_classes() -> tuple:
    from mpi4py import MPI

    names = ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
    return tuple(getattr(MPI, n) for n in names if hasattr(MPI, n))


def is_failure(error: BaseException, statuses=()) -> bool:
    """True for an MPI error saying a peer died or a communicator was revoked (for
    ``ERR_IN_STATUS``, when one of ``statuses`` says so)."""
    if isinstance(error, PeerFailure):
        return True
    from mpi4py import MPI

    if not isinstance(error, MPI.Exception):
        return False
    classes = _failure_classes()
    if error.Get_error_class() in classes:
        return True
    if error.Get_error_class() == MPI.ERR_IN_STATUS:
        return any(MPI.Get_error_class(s.Get_error()) in classes for s in statuses)
    return False
