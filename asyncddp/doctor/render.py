"""The terminal view of a ``DoctorReport``: a table that stays readable from one node to hundreds.

A few nodes get one column each (checks as rows), where every detail fits side by side. Past what
the terminal width holds at about 30 characters a node, the table turns around: one row per group
of nodes with the same outcome, nodes that passed everything folded into one row and each problem
spelt out once with the nodes it concerns. Fixes are listed once per (check, fix) with their nodes.
The cross-node checks and the one-line verdict follow in both layouts.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asyncddp.doctor.report import OK, CheckResult, DoctorReport, NodeReport

__all__ = ["render", "node_columns_fit"]

_STYLE = {"ok": ("green", "ok"), "warn": ("yellow", "WARN"), "fail": ("red", "FAIL")}
_NODE_WIDTH = 30  # narrowest node column that keeps a detail like "ok 3.11.7 (/usr/bin/python3)" on 2 lines
_CHECK_WIDTH = 14
_STAGES = ("ssh", "dns", "tcp", "host key", "auth")  # connection stages first, then the probe's checks


def node_columns_fit(num_nodes: int, width: int) -> bool:
    """Whether one column per node fits ``width`` terminal columns."""
    return num_nodes <= max(1, (width - _CHECK_WIDTH) // _NODE_WIDTH)


def _cell(check: CheckResult | None) -> str:
    if check is None:
        return "[dim]-[/]"
    color, word = _STYLE[check.status]
    return f"[{color}]{word}[/] {escape(check.detail)}"


def _node_columns(report: DoctorReport) -> Table:
    table = Table(title="asyncddp doctor", show_lines=False)
    table.add_column("check", style="bold")
    for node in report.nodes:
        table.add_column(escape(node.host), overflow="fold")
    found = list(dict.fromkeys(check.name for node in report.nodes for check in node.checks))
    names = [name for name in _STAGES if name in found] + [name for name in found if name not in _STAGES]
    for name in names:
        table.add_row(name, *(_cell(node.check(name)) for node in report.nodes))
    return table


def _problems(node: NodeReport) -> tuple[tuple[str, str, str], ...]:
    return tuple((check.name, check.status, check.detail) for check in node.checks if check.status != OK)


def _node_rows(report: DoctorReport) -> Table:
    """One row per distinct outcome: the nodes that share it, its status, and its problems."""
    groups: dict[tuple, list[NodeReport]] = {}
    for node in report.nodes:
        groups.setdefault(_problems(node), []).append(node)
    table = Table(title=f"asyncddp doctor: {len(report.nodes)} nodes", show_lines=True)
    table.add_column("nodes", overflow="fold", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("checks", overflow="fold", ratio=2)
    # Failures first, then warnings, then the nodes that passed everything.
    order = sorted(groups.items(), key=lambda item: -max((_rank(s) for _, s, _ in item[0]), default=0))
    for problems, nodes in order:
        status = nodes[0].status
        color, word = _STYLE[status]
        names = ", ".join(escape(node.host) for node in nodes) + (f" ({len(nodes)} nodes)" if len(nodes) > 1 else "")
        if problems:
            text = "\n".join(f"{name}: [{_STYLE[s][0]}]{_STYLE[s][1]}[/] {escape(detail)}" for name, s, detail in problems)
        else:
            text = "all checks ok"
        table.add_row(names, f"[{color}]{word}[/]", text)
    return table


def _rank(status: str) -> int:
    return {"ok": 0, "warn": 1, "fail": 2}[status]


def _cluster_table(report: DoctorReport) -> Table:
    cluster = Table(title="across nodes")
    cluster.add_column("check", style="bold")
    cluster.add_column("result", overflow="fold")
    for check in report.cluster:
        cluster.add_row(check.name, _cell(check))
    return cluster


def _fix_lines(report: DoctorReport) -> list[str]:
    """``  where: check: fix``, one line per (check, fix) with every node it applies to."""
    fixes: dict[tuple[str, str], list[str]] = {}
    for node in report.nodes:
        for check in node.checks:
            if check.status != OK and check.fix:
                fixes.setdefault((check.name, check.fix), []).append(node.host)
    for check in report.cluster:
        if check.fix and (check.status != OK or check.name == "shared subnet"):
            fixes.setdefault((check.name, check.fix), []).append("cluster")
    lines = []
    for (name, fix), hosts in fixes.items():
        where = ", ".join(hosts) if len(hosts) <= 3 else f"{len(hosts)} nodes ({', '.join(hosts[:3])}, ...)"
        lines.append(f"  {where}: {name}: {fix}")
    return lines


def render(report: DoctorReport, console: Console | None = None) -> None:
    """Print the report: node table (layout by width), cross-node checks, fixes, verdict."""
    console = console or Console(soft_wrap=False)
    fits = node_columns_fit(len(report.nodes), console.width)
    console.print(_node_columns(report) if fits else _node_rows(report))
    if report.cluster:
        console.print(_cluster_table(report))
    for line in _fix_lines(report):
        console.print(line, highlight=False, markup=False)
    color, _ = _STYLE[report.status]
    console.print(f"[bold {color}]{report.verdict()}[/]", highlight=False)
