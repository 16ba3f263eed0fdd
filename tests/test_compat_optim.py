"""BlueFog's optimizer names and its optimization example, through the compatibility layer,
under a real mpirun / ``asyncddp run``."""

from __future__ import annotations

import re

from tests.cli import asyncddp
from tests.mpi_helpers import ROOT, run_mpi_pytest

EXAMPLE = ROOT / "examples" / "bluefog" / "optimization.py"
BENCHMARK = ROOT / "examples" / "bluefog" / "benchmark.py"
BENCH_LINE = re.compile(r"^\[0\] benchmark (\S+) (awc|atc) ranks=4 samples_per_sec_per_rank=(\S+) "
                        r"total_samples_per_sec=(\S+) last_loss=(\S+)$", re.M)
RESULT = re.compile(r"^\[0\] optimization (\S+) (\S+) ranks=(\d+) iters=(\d+) mean_distance_to_optimum=(\S+)$", re.M)


def test_bluefog_optimizers_under_mpirun():
    run_mpi_pytest(4, "tests/mpi/test_compat_optim.py", env={"BLUEFOG_NODES_PER_MACHINE": "2"})


def _bluefog_imports(path, tmp_path):
    """The example with BlueFog's own import lines, as a user's unchanged script."""
    text = path.read_text()
    text = text.replace("import asyncddp.compat.bluefog as bf\n", "import bluefog.torch as bf\n")
    text = text.replace("from asyncddp.compat import topology_util\n", "from bluefog.common import topology_util\n")
    imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
    assert "import bluefog.torch as bf" in imports and not any("asyncddp" in line for line in imports)
    script = tmp_path / f"bluefog_{path.name}"
    script.write_text(text)
    return script


def test_benchmark_example_with_every_optimizer_choice(tmp_path):
    script = _bluefog_imports(BENCHMARK, tmp_path)
    done = asyncddp("run", "-np", "4", "-x", "BLUEFOG_NODES_PER_MACHINE=2", "-m", "asyncddp.compat.run_bluefog",
                    str(script), "--dist-optimizer", "all", "--atc-style", "--num-iters", "2", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = BENCH_LINE.findall(done.stdout)
    assert [kind for kind, *_ in lines] == ["neighbor_allreduce", "hierarchical_neighbor_allreduce", "allreduce",
                                            "gradient_allreduce", "win_put"], done.stdout
    for kind, style, per_rank, total, loss in lines:
        assert style == "atc" and float(per_rank) > 0 and float(total) > float(per_rank)
        assert 0 < float(loss) < 5, (kind, loss)


def asyncddp_run(*args: str) -> dict[str, tuple[str, int, float]]:
    """{method: (topology, ranks, mean distance to the optimum)} from rank 0's lines."""
    done = asyncddp("run", *args, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    found = {m[1]: (m[2], int(m[3]), float(m[5])) for m in RESULT.finditer(done.stdout)}
    assert found, done.stdout
    return found


def test_every_method_of_the_optimization_example():
    found = asyncddp_run("-np", "4", str(EXAMPLE), "--method", "all", "--max-iters", "150", "--lr", "0.3")
    assert sorted(found) == ["diffusion", "exact_diffusion", "gradient_tracking", "push_diging"]
    assert all(topology == "expo2" and ranks == 4 for topology, ranks, _ in found.values())
    for method in ("exact_diffusion", "gradient_tracking", "push_diging"):
        assert found[method][2] < 1e-9, (method, found[method])
    # Plain diffusion stops at a bias of order lr: close, but clearly not exact.
    assert 1e-4 < found["diffusion"][2] < 0.1


def test_unchanged_bluefog_optimization_script_through_the_alias(tmp_path):
    script = _bluefog_imports(EXAMPLE, tmp_path)
    found = asyncddp_run("-np", "3", "-m", "asyncddp.compat.run_bluefog", str(script),
                         "--method", "push_diging", "--virtual-topology", "ring", "--max-iters", "150", "--lr", "0.3")
    topology, ranks, error = found["push_diging"]
    assert (topology, ranks) == ("ring", 3) and error < 1e-9
