"""BlueFog behaviours that BlueFog's own tests and lecture code rely on, under a real mpirun.

``tests/mpi/test_compat_gaps.py`` runs on every rank at 3 and 4 ranks (a ring of 3 has no
rank outside a sender's two neighbours; 4 has one). The scripts below are BlueFog's published
snippets (its lecture's decentralized least squares, its README's consensus), read from the
seed documents in ``/work/shared/seeds`` and run unchanged through
``asyncddp run -m asyncddp.compat.run_bluefog``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli import asyncddp
from tests.mpi_helpers import run_mpi_pytest

SEEDS = Path("/work/shared/seeds")


@pytest.mark.parametrize("num_ranks", [3, 4])
def test_bluefog_behaviours_under_mpirun(num_ranks):
    run_mpi_pytest(num_ranks, "tests/mpi/test_compat_gaps.py")


def _seed_code(marker: str) -> str:
    """The code block of the seed document that contains ``marker``, as published."""
    for path in sorted(SEEDS.glob("*.txt")):
        text = path.read_text()
        if marker in text:
            return text
    pytest.skip(f"no seed document in {SEEDS} contains {marker!r}")


def _lecture_least_squares() -> str:
    text = _seed_code("A.t().mm(A.mm(x) - b)")
    block = text[text.index("```\n", text.index("Decentralized least-square")) + 4:]
    block = block[:block.index("```")]
    # The slide numbers its lines ("5 G = ..."); the code is what follows each number.
    return "\n".join(re.sub(r"^\d+ ?", "", line) for line in block.splitlines()) + "\n"


def _readme_consensus() -> str:
    text = _seed_code("x = bf.neighbor_allreduce(x)\n   print(")
    start = text.index("   import torch\n   import bluefog.torch as bf\n\n   bf.init()\n   x = torch.Tensor")
    end = text.index("\n\n", text.index("print(", start))
    return "\n".join(line[3:] for line in text[start:end].splitlines()) + "\n"


def _asyncddp_run(script: Path, num_ranks: int = 4) -> str:
    done = asyncddp("run", "-np", str(num_ranks), "-m", "asyncddp.compat.run_bluefog", str(script), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_lecture_least_squares_runs_unchanged(tmp_path):
    code = _lecture_least_squares()
    assert code.startswith("import bluefog.torch as bf\nbf.init()")
    assert "G = bf.ExponentialTwoGraph(bf.size())" in code
    # Our lines set up each rank's A_i, b_i, x, gamma and maxite before the lecture's code, and
    # afterwards compare every rank's x with the global least-squares solution.
    setup = (
        "import os, torch\n"
        "torch.set_default_dtype(torch.float64)\n"
        "_rank = int(os.environ['OMPI_COMM_WORLD_RANK'])\n"
        "_gen = torch.Generator().manual_seed(7)\n"
        "_x_star = torch.randn(5, 1, generator=_gen)\n"
        "_gen.manual_seed(100 + _rank)\n"
        "A = torch.randn(20, 5, generator=_gen)\n"
        "b = A.mm(_x_star)\n"
        "x = torch.zeros(5, 1)\n"
        "gamma, maxite = 0.01, 1500\n"
    )
    check = "print(f'rank {bf.rank()} error {(x - _x_star).abs().max().item():.3e}')\n"
    script = tmp_path / "lecture_dgd.py"
    script.write_text(setup + code + check)
    out = _asyncddp_run(script)
    errors = [float(e) for e in re.findall(r"rank \d error (\S+)", out)]
    assert len(errors) == 4 and max(errors) < 1e-6, out  # consistent data: DGD finds x*


def test_readme_consensus_runs_unchanged(tmp_path):
    code = _readme_consensus()
    assert code.splitlines()[:2] == ["import torch", "import bluefog.torch as bf"]
    script = tmp_path / "readme_consensus.py"
    script.write_text(code)
    out = _asyncddp_run(script)
    # 100 rounds of exponential-graph averaging over 4 ranks: everyone holds the mean, 1.5.
    values = re.findall(r"\] (\d): Average value of all ranks is tensor\(\[(\S+)\]\)", out)
    assert sorted(int(r) for r, _ in values) == [0, 1, 2, 3], out
    assert all(abs(float(v) - 1.5) < 1e-6 for _, v in values), out
