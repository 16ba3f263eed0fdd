"""Show benchmark results: rich tables, nccl-tests-style plain text, PNG plots.

Pure formatting of the result dataclasses (``bench comm``, ``bench MODEL``, its bandwidth
sweep and its lost rank (``--kill-rank``), ``bench straggler``); nothing here runs MPI. The plot uses matplotlib's
Agg backend (no display needed) and is imported only when asked for.
"""

from __future__ import annotations

from asyncddp.bench.results import CommBenchResult

__all__ = ["COLUMNS", "comm_table", "comm_text", "comm_plot", "footer_lines", "network_lines", "model_table",
           "model_plot", "fault_rows", "fault_table", "fault_plot", "sweep_table", "sweep_plot", "straggler_table"]

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
    ("raw_op(us)", "raw_op_time_us", "{:.1f}"),
    ("ours/raw_op", "op_ratio", "{:.2f}"),
)
# Short op labels keep the table inside a terminal; --json keeps the full names.
OP_LABELS = {"neighbor_allreduce": "nbr_ar_exp2", "neighbor_allreduce_one_peer": "nbr_ar_1peer",
             "hierarchical_neighbor_allreduce": "hier_nbr_ar", "allreduce": "allreduce", "allgather": "allgather",
             "broadcast": "broadcast", "win_put": "win_put"}
NOTE = ("algbw/busbw in GB/s; ours/raw = our time / raw mpi4py moving the same bytes (neighbour ops: "
        "Sendrecv only, no averaging; hier: machine Allreduce, leaders' Sendrecv, machine Bcast); ours/raw_op = "
        "our time / the same operation hand-written in mpi4py+numpy (neighbour ops: the same exchanges, then "
        "the same average in place; other ops: = raw). Lower is better")
ONE_PEER_NOTE = ("one-peer vs allreduce = allreduce time / one-peer neighbour averaging time of the same buffer "
                 "(raw: MPI Allreduce / one Sendrecv); a ring allreduce sends 2(n-1)/n x S per rank, one peer S")


def _cells(row) -> list[str]:
    cells = [fmt.format(getattr(row, attr)) for _, attr, fmt in COLUMNS]
    cells[0] = OP_LABELS.get(row.op, row.op)
    return cells


def footer_lines(result: CommBenchResult) -> list[str]:
    lines = [f"# Out of bounds values : {result.num_wrong} {'OK' if result.num_wrong == 0 else 'FAILED'}",
             f"# Avg bus bandwidth    : {result.avg_busbw_gbs:.4f} GB/s"]
    comparisons = result.one_peer_vs_allreduce()
    if comparisons:
        lines.append("# One-peer vs allreduce: " + ", ".join(
            f"{_size(c.size_bytes)} {c.speedup:.2f}x (raw {c.raw_speedup:.2f}x)" for c in comparisons))
    return lines


def _size(size_bytes: int) -> str:
    for unit, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size_bytes >= scale and size_bytes % scale == 0:
            return f"{size_bytes // scale}{unit}"
    return f"{size_bytes}B"


def network_lines(network) -> list[str]:
    """The ``# network:`` line under a table (nothing on real hosts)."""
    return [f"# network: {network.describe()}"] if network is not None else []


def _title(result: CommBenchResult) -> str:
    return (f"asyncddp bench comm: {result.num_ranks} ranks, {result.device}, {result.dtype}, "
            f"{result.iters} iters after {result.warmup} warm-up")


def comm_table(result: CommBenchResult):
    """A rich ``Table`` of every row (print it with a rich Console)."""
    from rich.table import Table

    from rich import box

    notes = [f"# note: {note}" for note in result.notes]
    extra = [f"# {ONE_PEER_NOTE}"] if result.one_peer_vs_allreduce() else []
    table = Table(title=_title(result), caption="\n".join([*footer_lines(result), *extra, f"# {NOTE}",
                                                           *network_lines(result.network), *notes]),
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
             *network_lines(result.network), *(f"# note: {note}" for note in result.notes),
             "#  " + "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for cells in rows:
        lines.append("   " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    extra = [f"# {ONE_PEER_NOTE}"] if result.one_peer_vs_allreduce() else []
    return "\n".join(lines + footer_lines(result) + [*extra, f"# {NOTE}"])


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


# ---- bench MODEL / straggler -------------------------------------------------------------------
MODEL_HEADERS = ("method", "np", "img/s", "img/s/rank", "iter(ms)", "eff vs np1", "eff vs local", "comm %",
                 "vs ddp")
MODEL_NOTE = ("eff vs np1 = img/s / (np x img/s at np=1, same method); eff vs local = img/s / local's img/s at "
              "this np; comm % = 1 - compute-only step time / step time (exposed communication); "
              "vs ddp = img/s / ddp's img/s at this np")


def _ratio(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}x"


def model_rows(result) -> list[list[str]]:
    """The table cells, one list per run (the same in the rich table and the docs)."""
    rows = []
    for run in result.runs:
        if not run.ok:
            rows.append([run.method, str(run.num_ranks), "failed", run.error or "", "", "", "", "", ""])
            continue
        d = result.derived(run)
        rows.append([run.method, str(run.num_ranks), f"{run.img_s_total:.1f}", f"{run.img_s_per_rank:.1f}",
                     f"{run.iter_ms:.1f}", _ratio(d["efficiency_vs_np1"], True),
                     _ratio(d["efficiency_vs_local"], True), f"{100 * run.comm_share:.1f}%",
                     _ratio(d["speed_vs_ddp"])])
    return rows


def _model_title(result) -> str:
    return (f"asyncddp bench {result.model}: {result.num_parameters / 1e6:.2f}M parameters, {result.device}, "
            f"batch {result.batch_size}/rank, {result.image_size}px, {result.iters} iters after {result.warmup} warm-up")


def model_table(result):
    """A rich ``Table`` of every (method, np) run; failed runs show their error."""
    from rich import box
    from rich.table import Table

    notes = sorted({f"# note: {note}" for run in result.runs for note in run.notes})
    notes += [f"# {run.method} -np {run.num_ranks}: {run.error}" for run in result.runs if not run.ok]
    table = Table(title=_model_title(result), caption="\n".join([f"# {MODEL_NOTE}", *network_lines(result.network),
                                                                 *notes]), caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in enumerate(MODEL_HEADERS):
        table.add_column(header, justify="left" if index == 0 else "right")
    previous = None
    for run, cells in zip(result.runs, model_rows(result)):
        if previous is not None and run.num_ranks != previous:
            table.add_section()
        previous = run.num_ranks
        if not run.ok:
            cells = [cells[0], cells[1], "[bold red]failed[/]", "(see below)", *cells[4:]]
        table.add_row(*cells)
    return table


def model_plot(result, path: str) -> None:
    """Throughput (left) and efficiency vs np=1 (right) per method against np, in ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    methods = list(dict.fromkeys(run.method for run in result.runs))
    for index, method in enumerate(methods):
        runs = [run for run in result.runs if run.method == method and run.ok]
        if not runs:
            continue
        nps = [run.num_ranks for run in runs]
        left.plot(nps, [run.img_s_total for run in runs], "-o", color=f"C{index}", label=method, markersize=4)
        effs = [(run.num_ranks, result.derived(run)["efficiency_vs_np1"]) for run in runs]
        effs = [(n, 100 * e) for n, e in effs if e is not None]
        if effs:
            right.plot(*zip(*effs), "-o", color=f"C{index}", label=method, markersize=4)
    rank_counts = sorted({run.num_ranks for run in result.runs})
    for ax, label in ((left, "images/s (all ranks)"), (right, "scaling efficiency vs np=1 (%)")):
        ax.set_xticks(rank_counts)  # the np values run, not fractions of a rank
        ax.set_xlabel("ranks (np)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(_model_title(result), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def straggler_table(result):
    """Sync vs async rows: fast ranks' img/s, the slow rank's, consensus error; speedup in the caption."""
    from rich import box
    from rich.table import Table

    o = result.options
    table = Table(title=(f"asyncddp bench straggler: {o.num_ranks} ranks, rank {o.slow_rank} {o.slow_factor:g}x slower, "
                         f"{o.model} batch {o.batch_size}/rank, {o.iters} iters"),
                  caption="\n".join([f"# async / sync fast-rank throughput: {result.speedup:.2f}x",
                                      "# consensus error = max_i |x_i - mean x| / |mean x| after the last step",
                                      *network_lines(result.network),
                                      *(f"# note: {note}" for note in result.notes)]),
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in enumerate(("averaging", "fast ranks img/s", "slow rank img/s", "consensus error")):
        table.add_column(header, justify="left" if index == 0 else "right")
    table.add_row("sync neighbor-exp2", f"{result.sync_fast_img_s:.1f}", f"{result.sync_slow_img_s:.1f}",
                  f"{result.sync_consensus_error:.2e}")
    table.add_row("async win-put", f"{result.async_fast_img_s:.1f}", f"{result.async_slow_img_s:.1f}",
                  f"{result.async_consensus_error:.2e}")
    return table


# ---- bench MODEL --kill-rank --------------------------------------------------------------------
FAULT_HEADERS = ("method", "ranks", "lost", "img/s\nbefore", "img/s\nafter", "after/\nbefore", "stall\n(s)",
                 "iter(ms)\nbefore", "iter(ms)\nafter", "max\n|Δw|", "replicas", "exit")
FAULT_NOTE = ("img/s before = survivors' mean per-rank rate before the loss x every rank; img/s after = survivors' "
              "total after their recovery step; stall = longest survivor's time from its last step before the loss "
              "to the end of the step it recovered in; max |Δw| = largest difference of any parameter between two "
              "survivors at the end, before any averaging")


def fault_rows(result) -> list[list[str]]:
    """The table cells, one list per method run."""
    rows = []
    for run in result.runs:
        exit_code = "-" if run.exit_code is None else str(run.exit_code)
        if not run.ok:
            rows.append([run.method, str(run.num_ranks), "", "failed", "", "", "", "", "", "", run.guarantee,
                         exit_code])
            continue
        lost = ",".join(map(str, run.lost_ranks)) or "none"
        stall = "-" if run.stall_s is None else f"{run.stall_s:.2f}"
        rows.append([run.method, f"{run.num_ranks}→{run.survivors}", lost, f"{run.img_s_before:.1f}",
                     f"{run.img_s_after:.1f}", _ratio(run.after_over_before), stall, f"{run.iter_ms_before:.1f}",
                     f"{run.iter_ms_after:.1f}", f"{run.disagreement:.2e}", run.guarantee, exit_code])
    return rows


def _fault_title(result) -> str:
    return (f"asyncddp bench {result.model} --kill-rank {result.kill_rank} --kill-at-step {result.kill_at_step}: "
            f"{result.num_ranks} ranks, {result.num_parameters / 1e6:.2f}M parameters, {result.device}, batch "
            f"{result.batch_size}/rank, {result.image_size}px, {result.iters} iters after {result.warmup} warm-up")


def fault_table(result):
    """One row per method; the lost ranks, what each method promises, errors and notes below the table."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from asyncddp.bench.fault import GUARANTEES

    table = Table(title=_fault_title(result), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for index, header in enumerate(FAULT_HEADERS):
        table.add_column(header, justify="left" if index in (0, 2, 10) else "right")
    for cells in fault_rows(result):
        table.add_row(*cells)
    lines = [f"# {FAULT_NOTE}"]
    lines += [f"# {run.method}: lost {'; '.join(run.lost)}" for run in result.runs if run.ok and run.lost]
    lines += [f"# {method} replicas: {GUARANTEES[method][1]}" for method in dict.fromkeys(r.method for r in result.runs)]
    lines += [f"# not run: {why}" for why in result.left_out]
    lines += [f"# {run.method}: {run.error}" for run in result.runs if not run.ok]
    lines += sorted({f"# note: {note}" for run in result.runs for note in run.notes})
    return Group(table, Text("\n".join([*lines, *network_lines(result.network)])))


def fault_plot(result, path: str) -> None:
    """img/s before and after the loss per method, side by side bars, in ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for run in result.runs if run.ok]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(runs) + 2), 4.5))
    places = range(len(runs))
    ax.bar([x - 0.2 for x in places], [run.img_s_before for run in runs], 0.4,
           label=f"before ({result.num_ranks} ranks)")
    ax.bar([x + 0.2 for x in places], [run.img_s_after for run in runs], 0.4, label="after (survivors)")
    ax.set_xticks(list(places), [run.method for run in runs], fontsize=8)
    ax.set_ylabel("images/s (all ranks)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_fault_title(result), fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- bench MODEL --sweep-bandwidth -------------------------------------------------------------
SWEEP_NOTE = ("img/s of all ranks at each link rate (every node's link, except nodes given their own rate); "
              "(x) = img/s / ddp's img/s at the same rate")


def sweep_rows(sweep) -> list[list[str]]:
    """One row per method: its img/s at each rate, with the speed against ddp where ddp ran."""
    rows = []
    for method in sweep.methods:
        cells = [method]
        for point in sweep.points:
            run = sweep.run(method, point.bandwidth_bps)
            if run is None or not run.ok:
                cells.append("failed" if run is not None else "-")
                continue
            vs_ddp = point.result.derived(run)["speed_vs_ddp"]
            cells.append(f"{run.img_s_total:.1f}" + (f" ({vs_ddp:.2f}x)" if vs_ddp is not None and method != "ddp"
                                                      else ""))
        rows.append(cells)
    return rows


def _sweep_title(sweep) -> str:
    first = sweep.points[0].result
    return (f"asyncddp bench {sweep.model} bandwidth sweep: {sweep.num_ranks} ranks, {first.num_parameters / 1e6:.2f}M "
            f"parameters, batch {first.batch_size}/rank, {first.image_size}px, {first.iters} iters after "
            f"{first.warmup} warm-up")


def sweep_table(sweep):
    """Methods down, link rates across, img/s in the cells; the notes below the table as full lines
    (a caption would wrap them to the table's few columns)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    errors = [f"# {run.method} at {point.bandwidth}: {run.error}" for point in sweep.points
              for run in point.result.runs if not run.ok]
    networks = [f"# at {point.bandwidth}: {point.result.network.describe()}" for point in sweep.points
                if point.result.network is not None]
    table = Table(title=_sweep_title(sweep), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("method", justify="left")
    for point in sweep.points:
        table.add_column(f"{point.bandwidth} img/s", justify="right")
    for cells in sweep_rows(sweep):
        table.add_row(*cells)
    return Group(table, Text("\n".join([f"# {SWEEP_NOTE}", *networks, *errors])))


def sweep_plot(sweep, path: str) -> None:
    """img/s (left) and iteration time (right) per method against link rate (log x), in ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for index, method in enumerate(sweep.methods):
        points = [(point.bandwidth_bps / 1e6, sweep.run(method, point.bandwidth_bps)) for point in sweep.points]
        points = [(mbit, run) for mbit, run in points if run is not None and run.ok]
        if not points:
            continue
        rates = [mbit for mbit, _ in points]
        left.plot(rates, [run.img_s_total for _, run in points], "-o", color=f"C{index}", label=method, markersize=4)
        right.plot(rates, [run.iter_ms for _, run in points], "-o", color=f"C{index}", label=method, markersize=4)
    for ax, label in ((left, "images/s (all ranks)"), (right, "iteration time (ms)")):
        ax.set_xscale("log")
        ax.set_xticks([point.bandwidth_bps / 1e6 for point in sweep.points],
                      [point.bandwidth for point in sweep.points])  # the rates run, in tc's spelling
        ax.minorticks_off()
        ax.set_xlabel("link bandwidth")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(_sweep_title(sweep), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
