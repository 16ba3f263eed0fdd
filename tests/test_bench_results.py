"""Pure parts of ``asyncddp bench``: option parsing, bus-bandwidth factors, rendering, line parsing."""

from __future__ import annotations

import sys
from dataclasses import asdict

import pytest

from asyncddp.bench import render
from asyncddp.bench.results import (OPS, CommBenchResult, CommRow, bus_factor, parse_methods, parse_ops, parse_size,
                                    size_steps)
from asyncddp.bench.runner import _Lines
from asyncddp.errors import ConfigError


@pytest.mark.parametrize("text,expected", [("1024", 1024), ("1K", 1024), ("1k", 1024), ("64M", 64 * 2**20),
                                           ("1G", 2**30), ("2KB", 2048), ("1.5K", 1536)])
def test_parse_size_accepts_suffixes(text, expected):
    assert parse_size(text, "--min-bytes") == expected


@pytest.mark.parametrize("text", ["", "1X", "K", "-4", "0", "1KK"])
def test_parse_size_rejects_garbage_naming_the_flag(text):
    with pytest.raises(ConfigError, match="--max-bytes"):
        parse_size(text, "--max-bytes")


def test_size_steps_follow_nccl_tests_b_e_f():
    assert size_steps(1024, 16 * 2**20, 4) == (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
    assert size_steps(1024, 1024, 2) == (1024,)
    with pytest.raises(ConfigError, match="swap"):
        size_steps(4096, 1024, 2)
    with pytest.raises(ConfigError, match="--step-factor"):
        size_steps(1024, 4096, 1)


def test_parse_ops_keeps_table_order_and_rejects_unknown():
    assert parse_ops(None) == OPS
    assert parse_ops(["win_put,allreduce", "broadcast"]) == ("allreduce", "broadcast", "win_put")
    with pytest.raises(ConfigError, match="'alltoall' is not a benchmarked op"):
        parse_ops(["allreduce,alltoall"])


def test_bus_factors():
    assert bus_factor("allreduce", 4, 2) == 1.5
    assert bus_factor("allgather", 4, 2) == 0.75
    assert bus_factor("broadcast", 8, 3) == 1.0
    assert bus_factor("neighbor_allreduce_one_peer", 8, 3) == 1.0
    assert bus_factor("neighbor_allreduce", 8, 3) == 3.0
    assert bus_factor("win_put", 5, 3) == 3.0


def _result(wrong: int = 0) -> CommBenchResult:
    rows = (CommRow("allreduce", 4096, 1024, "float32", 20.0, 0.2048, 0.3072, wrong, 10.0, 0.6144, 2.0, 10.0, 2.0),
            CommRow("neighbor_allreduce_one_peer", 4096, 1024, "float32", 10.0, 0.4096, 0.4096, 0, 8.0, 0.512, 1.25,
                    12.5, 0.8))
    return CommBenchResult(num_ranks=4, device="cpu", dtype="float32", iters=2, warmup=1, rows=rows,
                           host="box", mpi_library="Open MPI v5.0.11, package: x")


def test_result_round_trips_through_json_dict():
    result = _result()
    data = result.to_dict()
    assert data["avg_busbw_gbs"] == pytest.approx((0.3072 + 0.4096) / 2)
    assert data["num_wrong"] == 0
    assert CommBenchResult.from_dict(data) == result
    assert data["rows"][1]["raw_op_time_us"] == 12.5 and data["rows"][1]["op_ratio"] == 0.8


def test_results_written_before_the_whole_op_baseline_still_load():
    data = _result().to_dict()
    for row in data["rows"]:
        del row["raw_op_time_us"], row["op_ratio"]
    rows = CommBenchResult.from_dict(data).rows
    assert [(row.raw_op_time_us, row.op_ratio) for row in rows] == [(0.0, 0.0), (0.0, 0.0)]


def test_text_has_nccl_tests_layout_and_footer():
    text = render.comm_text(_result(wrong=3))
    lines = text.splitlines()
    assert lines[1] == "# Open MPI v5.0.11 on box"
    assert lines[2].split() == ["#", "op", "size(B)", "count", "type", "time(us)", "algbw", "busbw", "#wrong",
                                "raw(us)", "raw_busbw", "ours/raw", "raw_op(us)", "ours/raw_op"]
    assert lines[3].split() == ["allreduce", "4096", "1024", "float32", "20.0", "0.205", "0.307", "3", "10.0",
                                "0.614", "2.00", "10.0", "2.00"]
    assert lines[4].split() == ["nbr_ar_1peer", "4096", "1024", "float32", "10.0", "0.410", "0.410", "0", "8.0",
                                "0.512", "1.25", "12.5", "0.80"]
    assert lines[-1].startswith("# algbw/busbw in GB/s; ours/raw = our time / raw mpi4py moving the same bytes")
    assert "ours/raw_op = our time / the same operation hand-written in mpi4py+numpy" in lines[-1]
    assert "# Out of bounds values : 3 FAILED" in lines
    assert "# Avg bus bandwidth    : 0.3584 GB/s" in lines


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "bw.png"
    render.comm_plot(_result(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_lines_feed_progress_result_and_errors():
    events = []
    sink = _Lines(events.append)
    sink.write('[0] ASYNCDDP_BENCH_PROGRESS {"done": 1, "total": 2, "op": "allreduce", "size": 1024}\n[1] no')
    sink.write('ise\n[0] ASYNCDDP_BENCH_RESULT {"rows": []}\n')
    sink.write("[1] asyncddp.bench.results.BenchError: --device cuda: no GPU\n[1] trailing\n")
    assert events == [{"done": 1, "total": 2, "op": "allreduce", "size": 1024}]
    assert sink.result == {"rows": []}
    assert list(sink.tail)[0] == "[1] noise"
    assert sink.rank_error() == "BenchError: --device cuda: no GPU"
    assert sink.error is None


def test_a_rank_error_line_is_kept_once_and_not_as_noise():
    sink = _Lines(None)
    sink.write('[1] ASYNCDDP_BENCH_ERROR {"type": "TaskError", "message": "--task m:f: no"}\n')
    sink.write('[0] ASYNCDDP_BENCH_ERROR {"type": "TaskError", "message": "second"}\n[mpirun] MPI_ABORT\n')
    assert sink.error == {"type": "TaskError", "message": "--task m:f: no"}
    assert list(sink.tail) == ["[mpirun] MPI_ABORT"]


def test_oversubscribed_launch_is_noted_beside_the_results(monkeypatch):
    from asyncddp.bench.runner import YIELD_ENV, _launch_notes, _plan
    from asyncddp.launcher.run_config import RunOptions

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.delenv(YIELD_ENV, raising=False)
    plan = _plan("comm", ("{}", "/tmp/r.json"), 4, RunOptions(), "/tmp").plan
    assert plan.env[YIELD_ENV] == "1"
    assert plan.argv[-10:] == (sys.executable, "-m", "asyncddp.launcher.torch_shim", "-m", "mpi4py",
                               "-m", "asyncddp.bench_ranks", "comm", "{}", "/tmp/r.json")
    assert _launch_notes(plan, 4) == (f"4 ranks on 2 cores: oversubscribed, launched with {YIELD_ENV}=1",)
    plan = _plan("comm", ("{}", "/tmp/r.json"), 2, RunOptions(), "/tmp").plan
    assert YIELD_ENV not in plan.env and _launch_notes(plan, 2) == ()


def test_rich_table_shows_every_row_footer_and_notes():
    from dataclasses import replace

    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(render.comm_table(replace(_result(), notes=("4 ranks on 2 cores: oversubscribed",))))
    text = console.export_text()
    assert "nbr_ar_1peer" in text and "allreduce" in text and "ours/raw" in text
    assert "# Avg bus bandwidth    : 0.3584 GB/s" in text
    assert "# note: 4 ranks on 2 cores: oversubscribed" in text


def test_one_peer_against_allreduce_is_derived_per_size_and_shown():
    result = _result()
    (comparison,) = result.one_peer_vs_allreduce()
    assert (comparison.size_bytes, comparison.allreduce_us, comparison.one_peer_us) == (4096, 20.0, 10.0)
    assert (comparison.speedup, comparison.raw_speedup) == (2.0, 1.25)
    assert result.to_dict()["one_peer_vs_allreduce"] == [asdict(comparison)]
    lines = render.comm_text(result).splitlines()
    assert "# One-peer vs allreduce: 4K 2.00x (raw 1.25x)" in lines
    assert any(line.startswith("# one-peer vs allreduce = allreduce time / one-peer") for line in lines)
    only_allreduce = CommBenchResult.from_dict({**result.to_dict(), "rows": [result.rows[0].to_dict()]})
    assert only_allreduce.one_peer_vs_allreduce() == ()
    assert not any("one-peer" in line.lower() for line in render.comm_text(only_allreduce).splitlines())


def test_hierarchical_counts_the_traffic_between_machines():
    assert OPS.index("hierarchical_neighbor_allreduce") == OPS.index("neighbor_allreduce_one_peer") + 1
    assert bus_factor("hierarchical_neighbor_allreduce", 8, 2) == 2.0  # 4 machines: Exp-2 degree 2
    assert bus_factor("hierarchical_neighbor_allreduce", 4, 0) == 1.5  # one machine: an allreduce of 4


def test_network_with_a_slow_node_is_recorded_per_node_and_round_trips():
    from asyncddp.bench.network import BenchNetwork
    from asyncddp.launcher.emulate_spec import parse_emulate_spec

    network = BenchNetwork.of(parse_emulate_spec("nodes=3,ranks_per_node=2,bandwidth=1gbit,slow_node=2:200mbit"), 6)
    assert [(link.node, link.ranks, link.rate_bps, link.rate) for link in network.nodes] == [
        (0, (0, 1), 10**9, "1gbit"), (1, (2, 3), 10**9, "1gbit"), (2, (4, 5), 2 * 10**8, "200mbit")]
    assert network.describe() == ("emulated cluster nodes=3,ranks_per_node=2,bandwidth=1gbit,slow_node=2:200mbit "
                                  "(links: nodes 0,1 1gbit; node 2 200mbit)")
    result = CommBenchResult(**{**_result().__dict__, "network": network})
    data = result.to_dict()
    assert data["network"]["nodes"][2] == {"node": 2, "ranks": [4, 5], "rate_bps": 2 * 10**8, "rate": "200mbit"}
    assert CommBenchResult.from_dict(data) == result
    assert f"# network: {network.describe()}" in render.comm_text(result).splitlines()
    assert _result().to_dict()["network"] is None


def test_an_empty_subset_is_refused_not_read_as_all():
    """``--methods ''`` or ``--ops ,`` (an unset shell variable) must not run everything."""
    from asyncddp.bench.results import METHODS, parse_methods

    assert parse_ops(None) == OPS and parse_methods(None) == METHODS
    with pytest.raises(ConfigError, match=r"^--methods '' names no method; choose from local, ddp, .* \(leave "
                                          r"--methods out for all\)$"):
        parse_methods([""])
    with pytest.raises(ConfigError, match=r"^--ops ',' names no op; choose from neighbor_allreduce, "):
        parse_ops([","])


def test_a_plot_path_that_is_a_folder_is_refused_before_the_bench(tmp_path):
    from asyncddp.cli.bench import _check_plot_path

    folder = tmp_path / "plot.png"
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"^--plot {folder}: exists and is not a file; give a file name$"):
        _check_plot_path(str(folder))
    _check_plot_path(str(tmp_path / "new.png"))


@pytest.mark.parametrize("items", [[""], [","], [" , "], ["", ""]])
def test_every_empty_spelling_of_a_subset_is_refused(items):
    # `--methods ''` (an unset shell variable) used to run every method, for minutes.
    with pytest.raises(ConfigError, match="--ops '.*' names no op"):
        parse_ops(items)
    with pytest.raises(ConfigError, match="--methods '.*' names no method; choose from local, ddp"):
        parse_methods(items)
