"""Per-rank pytest configuration for tests that run under mpirun (see tests/mpi_helpers.py).

A failing test on one rank would leave the others waiting in a collective; aborting the job on
the first failure turns that into a prompt, visible failure.
"""

from __future__ import annotations

import sys

import pytest

import asyncddp as addp


def pytest_runtest_logreport(report):
    if report.failed:
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_size() > 1:
            print(
                f"\n[rank {MPI.COMM_WORLD.Get_rank()}] FAILED {report.nodeid}\n{report.longreprtext}",
                file=sys.stderr,
                flush=True,
            )
            MPI.COMM_WORLD.Abort(1)


@pytest.fixture(scope="session", autouse=True)
def _asyncddp_session():
    addp.init()
    yield
    addp.shutdown()
