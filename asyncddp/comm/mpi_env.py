"""MPI environment fixes that must happen before ``MPI_Init`` (so: no mpi4py, no torch here).

Open MPI 5 from PyPI ships components for fabrics this node may not have, and on a node without
them two cost every job something: the UCX one-sided component's query fails and prints "OSC UCX
component priority set inside component query failed" on every window creation (another
component, ``osc/sm`` on one node or ``osc/rdma`` across nodes, then works), and the libfabric
BTL (``btl/ofi``) takes about 1 s of every rank's ``MPI_Init`` to find no usable provider
(measured: 4 ranks, ``MPI_Init`` 1.15 s with it, 0.24 s without). Where no fabric device exists
we deselect both through Open MPI's own MCA environment variables, unless the user chose
components themselves. Other MPI libraries ignore ``OMPI_MCA_*``. An environment variable
outranks Open MPI's parameter files, so a ``btl`` or ``osc`` list set in ``mca-params.conf``
becomes "all but UCX/ofi" here; set ``OMPI_MCA_btl``/``OMPI_MCA_osc`` to keep such a list.
"""

from __future__ import annotations

import glob
import os

__all__ = ["configure_components", "fabric_devices"]

# Devices of the fabrics these components serve: InfiniBand/RoCE and EFA (verbs), HPE Slingshot
# (cxi), Omni-Path (hfi1).
FABRIC_DEVICE_PATTERNS = ("infiniband", "cxi*", "hfi1*")
DESELECTED = {"OMPI_MCA_osc": "^ucx", "OMPI_MCA_btl": "^ofi"}


def fabric_devices(dev: str = "/dev") -> list[str]:
    """The fabric devices under ``dev`` (none on an Ethernet-only node)."""
    return sorted(path for pattern in FABRIC_DEVICE_PATTERNS for path in glob.glob(os.path.join(dev, pattern)))


def configure_components(environ=None, dev: str = "/dev") -> dict[str, str]:
    """On a node without fabric devices, deselect Open MPI's UCX windows and libfabric BTL, each
    where the user left its variable unset; returns what was set."""
    env = os.environ if environ is None else environ
    if fabric_devices(dev):
        return {}
    chosen = {name: value for name, value in DESELECTED.items() if name not in env}
    env.update(chosen)
    return chosen
