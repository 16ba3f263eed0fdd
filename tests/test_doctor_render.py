"""doctor's table: one column per node while they fit, one row per outcome past that, at 80 columns."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rich.console import Console

from asyncddp.doctor.render import node_columns_fit, render
from asyncddp.doctor.report import CheckResult, DoctorReport, NodeReport


def fifty_nodes() -> DoctorReport:
    nodes = []
    for index in range(50):
        checks = [CheckResult("dns", "ok", "resolved"), CheckResult("python", "ok", "3.11.7 (/usr/bin/python3)")]
        if index in (7, 31):
            checks = [CheckResult("dns", "ok", "resolved"), CheckResult(
                "tcp", "fail", f"cannot connect to node{index:02d}:22: Connection refused", "start sshd on the node")]
        elif index % 10 == 3:
            checks.append(CheckResult("mpi4py", "warn", "4.1.2 on Open MPI v5.0.11, but mpirun is 4.1.4",
                                      "use the mpirun of the MPI mpi4py was built against"))
        nodes.append(NodeReport(f"node{index:02d}", f"hosts.txt:{index + 1}", tuple(checks)))
    return DoctorReport(tuple(nodes), (CheckResult("same python", "ok", "3.11.7 on 48 node(s)"),), None, 12.0)


def rendered(report: DoctorReport, width: int) -> str:
    out = io.StringIO()
    render(report, Console(file=out, width=width, force_terminal=False, color_system=None))
    return out.getvalue()


def test_fifty_nodes_fold_into_rows_at_80_columns():
    text = rendered(fifty_nodes(), 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "asyncddp doctor: 50 nodes" in text
    # Each failure has its own row, first; the 43 clean nodes share one row.
    failures = [line for line in lines if "FAIL" in line and "tcp:" in line]
    assert [line.split()[1] for line in failures] == ["node07", "node31"]
    assert text.index("node07") < text.index("node03") < text.index("node00")
    assert "(5 nodes)" in text and "(43" in text and text.count("all checks ok") == 1
    assert sum(line.count("mpi4py: WARN") for line in lines) == 1  # the shared warning once, not 5 times
    assert "  5 nodes (node03, node13, node23, ...): mpi4py: use the mpirun of the MPI" in text
    assert "  node07, node31: tcp: start sshd on the node" in text
    assert lines[-1] == "NOT ready: 50 node(s), 106 checks, 99 ok, 5 warn, 2 fail in 12.0 s"


def test_few_nodes_keep_one_column_each():
    report = DoctorReport(fifty_nodes().nodes[:2], (), None, 1.0)
    text = rendered(report, 80)
    assert node_columns_fit(2, 80) and not node_columns_fit(3, 80) and node_columns_fit(6, 200)
    header = next(line for line in text.splitlines() if "node00" in line)
    assert "check" in header and "node01" in header  # nodes are the columns
    assert "ok 3.11.7 (/usr/bin/python3)" in text


def test_markup_in_details_is_printed_as_text():
    node = NodeReport("a", "x", (CheckResult("host key", "fail", "CHANGED key for [bold]127.0.0.1[/bold]:22", "fix [red]"),))
    text = rendered(DoctorReport((node,), (), None, 0.1), 120)
    assert "CHANGED key for [bold]127.0.0.1[/bold]:22" in text and "a: host key: fix [red]" in text


def test_cli_with_many_unreachable_hosts_at_80_columns():
    hosts = ",".join(["localhost"] + [f"node{index}.invalid" for index in range(1, 7)])
    done = subprocess.run([sys.executable, "-m", "asyncddp", "doctor", "-H", hosts, "--timeout", "2"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 2, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    assert "asyncddp doctor: 7 nodes" in done.stdout
    for index in range(1, 7):
        assert f"node{index}.invalid" in done.stdout
    assert lines[-1].startswith("NOT ready: 7 node(s), ")
