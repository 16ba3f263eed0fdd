"""Compatibility layers for code written against other libraries (today: BlueFog 0.3).

``import asyncddp.compat.bluefog as bf`` gives BlueFog's ``bluefog.torch`` names over asyncddp's
own core. Scripts that say ``import bluefog.torch as bf`` run unchanged once the alias is
installed, either in the script's process::

    import asyncddp.compat; asyncddp.compat.install_bluefog_alias()

or, without touching the script, through the runner module::

    asyncddp run -np 4 -m asyncddp.compat.run_bluefog train.py --lr 0.1

Importing this package is cheap (no torch, no MPI); ``install_bluefog_alias`` imports torch.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["install_bluefog_alias", "BLUEFOG_ALIASES"]

# Importable BlueFog module name -> the asyncddp module that stands in for it.
BLUEFOG_ALIASES = {
    "bluefog.torch": "asyncddp.compat.bluefog",
    "bluefog.common.topology_util": "asyncddp.compat.topology_util",
    "bluefog.common.util": "asyncddp.compat.util",
}


def _package(name: str) -> types.ModuleType:
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name, f"asyncddp's stand-in for BlueFog's {name} package")
        module.__path__ = []  # a package, so that ``import bluefog.torch`` resolves its child
        sys.modules[name] = module
    return module


def install_bluefog_alias() -> types.ModuleType:
    """Register ``bluefog``, ``bluefog.torch``, ``bluefog.common``,
    ``bluefog.common.topology_util`` and ``bluefog.common.util`` in ``sys.modules``; returns the
    ``bluefog`` package.

    Idempotent. Refuses (ImportError) to shadow a real BlueFog installation already imported.
    """
    existing = sys.modules.get("bluefog")
    if existing is not None and getattr(existing, "__asyncddp_alias__", False) is False:
        raise ImportError("a real 'bluefog' module is already imported; asyncddp's alias would shadow it")
    for alias, target in BLUEFOG_ALIASES.items():
        module = importlib.import_module(target)
        parent_name, _, child = alias.rpartition(".")
        # Build every parent package (bluefog, bluefog.common) and link each child into it.
        parts = parent_name.split(".")
        for depth in range(1, len(parts) + 1):
            package = _package(".".join(parts[:depth]))
            package.__asyncddp_alias__ = True
            if depth > 1:
                setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], package)
        sys.modules[alias] = module
        setattr(sys.modules[parent_name], child, module)
    _restore_networkx_2_names()
    return sys.modules["bluefog"]


def _restore_networkx_2_names() -> None:
    """BlueFog 0.3 ran on networkx 2, and code written for it calls ``nx.to_numpy_matrix``,
    which networkx 3.0 removed; give it back (an ``np.matrix`` of ``nx.to_numpy_array``) when
    the installed networkx lacks it. Nothing else in networkx is touched."""
    import networkx as nx
    import numpy as np

    if "to_numpy_matrix" in dir(nx):
        return

    def to_numpy_matrix(G, nodelist=None, dtype=None, order=None, multigraph_weight=sum,
                        weight="weight", nonedge=0.0):
        return np.asmatrix(nx.to_numpy_array(G, nodelist=nodelist, dtype=dtype, order=order,
                                             multigraph_weight=multigraph_weight, weight=weight,
                                             nonedge=nonedge))

    nx.to_numpy_matrix = to_numpy_matrix
