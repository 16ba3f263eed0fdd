"""``asyncddp doctor``: check every node of a cluster over SSH before a job is launched.

``run_doctor(hosts, options)`` returns a ``DoctorReport`` (per-node checks, cross-node checks, the
shared subnet); ``ssh_preflight(hosts, ...)`` runs only the SSH stages and returns one message per
unreachable host. The probe (``probe.py``) is sent as text to each node's own Python.
"""

from __future__ import annotations

from asyncddp.doctor.core import DoctorOptions, run_doctor
from asyncddp.doctor.report import CheckResult, DoctorReport, NodeReport
from asyncddp.launcher.ssh import SshOptions, fingerprint, ssh_preflight

__all__ = [
    "CheckResult",
    "DoctorOptions",
    "DoctorReport",
    "NodeReport",
    "SshOptions",
    "fingerprint",
    "run_doctor",
    "ssh_preflight",
]
