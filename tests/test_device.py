"""Device helpers that need no GPU, and the CUDA paths under mpirun when a GPU is present."""

import os
import subprocess
import sys

import pytest
import torch

from asyncddp.comm.device import chunk_ranges, parse_ompi_info_cuda
from tests.mpi_helpers import ROOT, run_mpi_pytest


def test_chunk_ranges():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_ranges(8, 4) == [(0, 4), (4, 8)]
    assert chunk_ranges(0, 4) == [(0, 0)]
    assert chunk_ranges(3, 4) == [(0, 3)]


def test_parse_ompi_info():
    assert parse_ompi_info_cuda("mca:mpi:base:param:mpi_built_with_cuda_support:value:true\n") is True
    assert parse_ompi_info_cuda("x\nmca:mpi:base:param:mpi_built_with_cuda_support:value:false") is False
    assert parse_ompi_info_cuda("nothing here") is None


@pytest.mark.parametrize("forced", ["0", "1"])
def test_cuda_awareness_override(forced):
    code = "import asyncddp as addp; addp.init(); print(addp.mpi_is_cuda_aware())"
    env = dict(os.environ, ASYNCDDP_CUDA_AWARE=forced)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == ("True" if forced == "1" else "False"), done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_staging_two_ranks_sharing_a_gpu():
    done = run_mpi_pytest(2, "tests/mpi/test_ops_cuda.py", extra_args=("-s",), env={"ASYNCDDP_CUDA_AWARE": "0"})
    print(done.stdout[-2000:])


def test_nccl_backend_falls_back_with_a_warning_without_gpus():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the fallback is for machines without one per rank")
    code = (
        "import warnings, torch, asyncddp as addp\n"
        "addp.init()\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = addp.allreduce(torch.ones(2))\n"
        "print(addp.comm_stats().backend, [str(w.message) for w in caught])\n"
    )
    env = dict(os.environ, ASYNCDDP_BACKEND="nccl")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mpi ['ASYNCDDP_BACKEND=nccl: falling back to MPI because on rank 0 no CUDA GPU is visible']")
    bad = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, ASYNCDDP_BACKEND="gloo"),
                         capture_output=True, text=True, timeout=120)
    assert "ASYNCDDP_BACKEND='gloo' is not a backend" in bad.stderr
