"""Show ``bench comm`` results: a rich table, nccl-tests-style plain text, a PNG plot.

Pure formatting of a ``CommBenchResult``; nothing here runs MPI. The plot uses matplotlib's
Agg backend (no display needed) and is imported only when asked for.
"""

from __future__ import annotations

from asyncddp.bench.results import CommBenchResult

__all__ = ["COLUMNS", "comm_table", "comm_text", "comm_plot", "footer_lines"]

# (header, row attribute, format) in table order; the same in the rich table and the text.
COLUMNS = (
    ("op", "op", "{}"),
    ("size(B)", "size_bytes", "{}"),
    ("count", "count", "{}"),
    ("type", "dtype", "{}"),
    ("time(us)", "time_us", "{:.1f}"),
    ("algbw", "algbw_gbs", "{:.3f}"),
    ("busbw", "busbw_gbs", "{:.3f}"),
    ("#wrong", "num_wrong", "{}"),
    ("raw(us)", "raw_time_us", "{:.1f}"),
    ("raw_busbw", "raw_busbw_gbs", "{:.3f}"),
    ("ours/raw", "ratio", "{:.2f}"),
)
# Short op labels keep the table inside a terminal; --json keeps the full names.
OP_LABELS = {"neighbor_allreduce": "nbr_ar_exp2", "neighbor_allreduce_one_peer": "nbr_ar_1peer",
             "allreduce": "allreduce", "allgather": "allgather", "broadcast": "broadcast", "win_put": "win_put"}
NOTE = "algbw/busbw in GB/s; ours/raw = our time / raw mpi4py time for the same bytes (lower is better)"


def _cells(row) -> list[str]:
    cells = [fmt.format(getattr(row, attr)) for _, attr, fmt in COLUMNS]
    cells[0] = OP_LABELS.get(row.op, row.op)
    return cells


def footer_lines(result: CommBenchResult) -> list[str]:
    return [f"# Out of bounds values : {result.num_wrong} {'OK' if result.num_wrong == 0 else 'FAILED'}",
            f"# Avg bus bandwidth    : {result.avg_busbw_gbs:.4f} GB/s"]


def _title(result: CommBenchResult) -> str:
    return (f"asyncddp bench comm: {result.num_ranks} ranks, {result.device}, {result.dtype}, "
            f"{result.iters} iters after {result.warmup} warm-up")


def comm_table(result: CommBenchResult):
    """A rich ``Table`` of every row (print it with a rich Console)."""
    from rich.table import Table

    from rich import box

    notes = [f"# note: {note}" for note in result.notes]
    table = Table(title=_title(result), caption="\n".join([*footer_lines(result), f"# {NOTE}", *notes]),
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for header, attr, _ in COLUMNS:
        table.add_column(header, justify="left" if attr in ("op", "dtype") else "right")
    previous = None
    for row in result.rows:
        if previous is not None and row.op != previous:
            table.add_section()
        previous = row.op
        cells = _cells(row)
        if row.num_wrong:
            cells[7] = f"[bold red]{cells[7]}[/]"
        table.add_row(*cells)
    return table


def comm_text(result: CommBenchResult) -> str:
    """The nccl-tests layout: '#' header lines, one right-aligned line per row, '#' footer."""
    headers = [header for header, _, _ in COLUMNS]
    rows = [_cells(row) for row in result.rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [f"# {_title(result)}", f"# {result.mpi_library.split(',')[0]} on {result.host}",
             *(f"# note: {note}" for note in result.notes),
             "#  " + "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for cells in rows:
        lines.append("   " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines + footer_lines(result) + [f"# {NOTE}"])


def comm_plot(result: CommBenchResult, path: str) -> None:
    """busbw against size per op (log-log): ours solid, raw mpi4py dashed, in ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ops = list(dict.fromkeys(row.op for row in result.rows))
    for index, op in enumerate(ops):
        rows = [row for row in result.rows if row.op == op]
        color = f"C{index}"
        sizes = [row.size_bytes for row in rows]
        ax.plot(sizes, [row.busbw_gbs for row in rows], "-o", color=color, label=OP_LABELS.get(op, op), markersize=3)
        ax.plot(sizes, [row.raw_busbw_gbs for row in rows], "--", color=color, alpha=0.6,
                label=f"{OP_LABELS.get(op, op)} (raw mpi4py)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.set_title(_title(result), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
