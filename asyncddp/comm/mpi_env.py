"""MPI environment fixes that must happen before ``MPI_Init`` (so: no mpi4py, no torch here).

Open MPI 5 from PyPI ships the UCX one-sided component; on a machine without UCX hardware its
query fails and prints "OSC UCX component priority set inside component query failed" on every
window creation, although another component (``osc/sm`` on one node, ``osc/rdma`` across nodes)
then works. We exclude it through Open MPI's own MCA environment variable unless the user chose
components themselves or InfiniBand devices exist. Other MPI libraries ignore ``OMPI_MCA_*``.
"""

from __future__ import annotations

import os

__all__ = ["configure_one_sided"]

OSC_ENV = "OMPI_MCA_osc"


def configure_one_sided(environ=None, ib_path: str = "/dev/infiniband") -> bool:
    """Set ``OMPI_MCA_osc=^ucx`` when unset and no UCX hardware is present; True if it did."""
    env = os.environ if environ is None else environ
    if OSC_ENV in env or os.path.exists(ib_path):
        return False
    env[OSC_ENV] = "^ucx"
    return True
