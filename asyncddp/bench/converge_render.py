"""Show ``asyncddp bench converge`` results: a rich table ranked by time to target, and a PNG.

Pure formatting of ``ConvergeResult``; the plot (matplotlib, Agg) is imported only when asked for.
"""

from __future__ import annotations

from asyncddp.bench.converge import ConvergeResult
from asyncddp.bench.render import network_lines

__all__ = ["HEADERS", "converge_rows", "converge_table", "converge_plot"]

HEADERS = ("method", "to target (s)", "steps", "final acc", "worst rank", "averaged", "consensus",
           "MB sent/rank", "MB to target", "vs ddp (time)")


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def converge_rows(result: ConvergeResult) -> list[list[str]]:
    """The table cells, one list per method (the same in the rich table and the docs)."""
    ddp = result.find("ddp")
    rows = []
    for row in result.rows:
        if not row.ok:
            rows.append([row.method, "failed", *[""] * (len(HEADERS) - 2)])
            continue
        ratio = None
        if ddp and ddp.time_to_target_s and row.time_to_target_s is not None:
            ratio = row.time_to_target_s / ddp.time_to_target_s
        mb = _mb(row.bytes_sent_per_rank) + (" (computed)" if row.bytes_counted == "computed" else "")
        rows.append([row.method, _num(row.time_to_target_s, "{:.2f}"), _num(row.steps_to_target, "{}"),
                     _num(row.final_accuracy, "{:.3f}"), _num(row.min_rank_accuracy, "{:.3f}"),
                     _num(row.averaged_model_accuracy, "{:.3f}"), _num(row.consensus_distance, "{:.2e}"), mb,
                     _mb(row.bytes_to_target), _num(ratio, "{:.2f}x")])
    return rows


def title(result: ConvergeResult) -> str:
    return (f"asyncddp bench converge: {result.task}, split {result.split}, {result.num_ranks} ranks, target "
            f"{_num(result.target_accuracy, '{:g}')}, {result.steps} steps of batch {result.batch_size}/rank, "
            f"lr {_num(result.lr, '{:g}')}, "
            f"{result.num_parameters / 1e3:.1f}K parameters")


def _caption(result: ConvergeResult) -> list[str]:
    lines = [f"# task: {result.task_description}; {result.train_size} train / {result.test_size} test samples; "
             f"shard sizes {list(result.shard_sizes)}, labels per shard {list(result.shard_classes)}",
             "# to target: training seconds (slowest rank, evaluations excluded) until the ranks' mean held-out "
             "accuracy first reached the target; final/worst rank: mean and lowest over ranks at the end; averaged: "
             "the model with every rank's parameters averaged; consensus: max over ranks of |x_i - mean|/|mean|; "
             "MB sent/rank: counted by the comm core (MPI collectives at their bandwidth-optimal volume), computed "
             "for ddp"]
    lines += network_lines(result.network)
    lines += sorted({f"# note: {note}" for row in result.rows for note in row.notes})
    lines += [f"# {row.method}: {row.error}" for row in result.rows if not row.ok]
    return lines


def converge_table(result: ConvergeResult):
    """A rich ``Table``: one row per method, fastest to target first."""
    from rich import box
    from rich.table import Table

    table = Table(title=title(result), caption="\n".join(_caption(result)), caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row, cells in zip(result.rows, converge_rows(result)):
        table.add_row(*(cells if row.ok else [cells[0], "[bold red]failed[/]", "(see below)", *cells[3:]]))
    return table


def converge_plot(result: ConvergeResult, path: str) -> None:
    """Mean held-out accuracy against training time (left) and against MB sent per rank (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for index, row in enumerate(r for r in result.rows if r.ok):
        accuracy = [p.mean_accuracy for p in row.curve]
        style = dict(color=f"C{index % 10}", label=row.method, markersize=3)
        left.plot([p.time_s for p in row.curve], accuracy, "-o", **style)
        right.plot([p.bytes_sent / 1e6 for p in row.curve], accuracy, "-o", **style)
    for ax, label in ((left, "training time (s)"), (right, "MB sent per rank")):
        if result.target_accuracy is not None:
            ax.axhline(result.target_accuracy, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out accuracy (mean over ranks)")
        ax.grid(True, alpha=0.3)
    right.set_xlim(left=0)  # local sends nothing: its line stands on the axis
    left.legend(fontsize=7)
    fig.suptitle(title(result), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
