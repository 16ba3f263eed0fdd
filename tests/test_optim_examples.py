"""The algorithm examples, run as users run them: ``asyncddp run -np 4 examples/X.py``."""

import json
import re
import subprocess

from tests.cli import asyncddp
from tests.mpi_helpers import mpi_env


def asyncddp_run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    done = asyncddp("run", "-np", "4", *args, timeout=timeout, env=mpi_env())
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _errors(stdout: str) -> list[float]:
    return [float(m) for m in re.findall(r"max relative error (\S+)", stdout)]


def test_average_consensus_static_exp2():
    errors = _errors(asyncddp_run("examples/average_consensus.py", "--steps", "8").stdout)
    assert len(errors) == 8
    # Exp-2 on 4 ranks with uniform weights 1/3: every eigenvalue but 1 has modulus 1/3, so the
    # error shrinks 3x per step (printed to 4 digits, hence the tolerance).
    for before, after in zip(errors, errors[1:]):
        assert abs(after / before * 3 - 1) < 2e-3
    assert errors[-1] < 1e-3


def test_average_consensus_dynamic_one_peer_is_exact_after_log2_n_steps():
    done = asyncddp_run("examples/average_consensus.py", "--topology", "one-peer-exp2", "--steps", "3")
    errors = _errors(done.stdout)
    assert len(errors) == 3 and errors[0] > 0.1
    assert errors[1] < 1e-12 and errors[2] < 1e-12


def test_least_squares_dgd_bias_and_exact_methods():
    lines = [json.loads(line.split("] ", 1)[1]) for line in
             asyncddp_run("examples/least_squares.py").stdout.splitlines() if "{" in line]  # fmt: skip
    by = {(r["method"], r["step"]): r["max_error"] for r in lines}
    big, small = by[("dgd", 0.2)], by[("dgd", 0.1)]
    # DGD with a constant step stops at a bias proportional to the step.
    assert big > 0.1 and small > 0.05
    assert 1.7 < big / small < 2.3
    assert by[("exact_diffusion", 0.4)] < 1e-6
    assert by[("gradient_tracking", 0.13)] < 1e-6


def test_train_mnist_like_one_peer_dynamic():
    done = asyncddp_run("examples/train_mnist_like.py", "--optimizer", "one-peer")
    losses = [float(v) for v in re.findall(r"mean training loss (\S+)", done.stdout)]
    assert len(losses) == 3 and losses[-1] < losses[0] / 4
    accuracy = float(re.search(r"test accuracy (\S+)", done.stdout).group(1))
    assert accuracy > 0.9


def test_train_async_fast_ranks_run_ahead():
    done = asyncddp_run("examples/train_async.py", "--seconds", "3")
    steps = json.loads(re.search(r"steps per rank (\[.*\])", done.stdout).group(1))
    assert steps[0] > 2 * steps[3], steps  # rank 3 sleeps 30 ms a step, rank 0 not at all
    accuracy = float(re.search(r"test accuracy of the averaged model (\S+)", done.stdout).group(1))
    assert accuracy > 0.9


def test_train_resnet_runs_with_awc():
    done = asyncddp_run("examples/train_resnet.py", "--optimizer", "neighbor-awc", "--steps", "3",
                        "--width", "8")  # fmt: skip
    match = re.search(r"images/s per rank ([\d.]+), total ([\d.]+); last loss ([\d.]+)", done.stdout)
    assert match, done.stdout
    per_rank, total, loss = map(float, match.groups())
    assert per_rank > 0 and 0 < loss < 10
    assert abs(total - 4 * per_rank) < 0.5  # both printed to 1 decimal
