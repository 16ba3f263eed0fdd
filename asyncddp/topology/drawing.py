"""PNG pictures of topologies and of consensus comparisons (matplotlib, Agg backend).

matplotlib is imported inside the functions so that importing asyncddp stays cheap. A static
graph is drawn on a circle with edge widths proportional to weights. A dynamic schedule is drawn
as the union of its steps over one period (or ``ceil(log2 n)`` steps for random schedules), each
step in its own colour; ``step=k`` draws step k alone.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from asyncddp.errors import TopologyError
from asyncddp.topology import schedules
from asyncddp.topology.registry import get_topology
from asyncddp.topology.reports import check_report_size

__all__ = ["draw_topology", "plot_comparison"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# A circle of more nodes is a blur of labels, and each edge is one matplotlib annotation.
MAX_DRAWN_RANKS = 256


def _check_output(path: str | Path) -> Path:
    """The PNG path to write, refused up front when its folder is missing or not writable."""
    path = Path(path)
    parent = path.absolute().parent
    if path.suffix.lower() != ".png":
        raise TopologyError(f"-o {path}: give a .png file name")
    if not parent.is_dir():
        raise TopologyError(f"-o {path}: folder {parent} does not exist or is not writable")
    try:  # a real file, not os.access: root passes access checks on read-only and virtual filesystems
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise TopologyError(f"-o {path}: cannot write it ({error.strerror or error})") from None
    return path


def _save(fig, path: Path) -> None:
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as error:
        raise TopologyError(f"-o {path}: cannot write it ({error.strerror or error})") from None


def _edges(name: str, n: int, step: int | None, params: dict) -> tuple[list[tuple[int, int, float, int]], str]:
    """(src, dst, weight, colour index) for every drawn edge, and a title."""
    if isinstance(n, int) and n > MAX_DRAWN_RANKS:
        raise TopologyError(f"-n {n}: a drawing shows at most {MAX_DRAWN_RANKS} ranks; use topology show for more")
    check_report_size(n, step, "--step")
    entry = get_topology(name)
    if entry.kind == "static":
        graph = entry.graph(n, **params)
        edges = [(j, i, w, 0) for j, i, w in graph.edges(data="weight", default=1.0) if i != j]
        return edges, f"{entry.name} (n={n})"
    if step is not None and (not isinstance(step, int) or step < 0):
        raise TopologyError(f"--step must be a non-negative integer, got {step!r}")
    count = entry.period(n, **params) or max(1, schedules.exp2_period(n))
    wanted = range(count) if step is None else [step]
    iterators = [entry.factory(**params)(n, rank=r) for r in range(n)]
    edges = []
    for k in range(max(wanted) + 1):
        steps = [next(it) for it in iterators]
        if k in wanted:
            for i, s in enumerate(steps):
                for j in s.recv_ranks:
                    edges.append((j, i, s.src_weights.get(j, 0.0) * steps[j].dst_weights.get(i, 0.0), k))
    what = f"step {step}" if step is not None else f"union of steps 0..{count - 1}"
    return edges, f"{entry.name} (n={n}, {what})"


def draw_topology(name: str, n: int, path: str | Path, step: int | None = None, **params) -> Path:
    """Draw the registered topology ``name`` on n ranks to a PNG at ``path``; returns the path."""
    path = _check_output(path)
    edges, title = _edges(name, n, step, params)
    plt = _pyplot()
    angles = [math.pi / 2 - 2 * math.pi * r / n for r in range(n)]
    xy = np.array([[math.cos(a), math.sin(a)] for a in angles])
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6, 6))
    top = max((w for *_, w, _ in edges), default=1.0) or 1.0
    for src, dst, weight, k in edges:
        ax.annotate(
            "", xy=xy[dst], xytext=xy[src],
            arrowprops={"arrowstyle": "-|>", "lw": 0.5 + 3.0 * weight / top, "color": colours(k % 10),
                        "alpha": 0.7, "shrinkA": 9, "shrinkB": 9, "connectionstyle": "arc3,rad=0.08"},
        )
    ax.scatter(xy[:, 0], xy[:, 1], s=300, color="white", edgecolors="black", zorder=3)
    for r in range(n):
        ax.text(xy[r, 0], xy[r, 1], str(r), ha="center", va="center", fontsize=8, zorder=4)
    steps_drawn = sorted({k for *_, k in edges})
    if len(steps_drawn) > 1:
        for k in steps_drawn:
            ax.plot([], [], color=colours(k % 10), label=f"step {k}")
        ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title + "; edge width = weight")
    ax.set_xlim(-1.25, 1.25)
    ax.set_ylim(-1.25, 1.25)
    ax.set_aspect("equal")
    ax.axis("off")
    _save(fig, path)
    plt.close(fig)
    return path


def plot_comparison(comparison, path: str | Path) -> Path:
    """Log-scale plot of a ``Comparison``'s error per step to a PNG at ``path``."""
    path = _check_output(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    floor = 1e-16  # exact zeros cannot sit on a log axis; draw them at the float64 floor
    for name, errors in comparison.errors.items():
        ax.semilogy(range(len(errors)), np.maximum(errors, floor), marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("relative consensus error")
    ax.set_title(f"consensus error, n={comparison.n}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return path
