"""``asyncddp bench`` on an emulated cluster: the real CLI, real namespaces and shaped links, tiny sizes.

``bench comm`` across 2 nodes of 2 ranks (hierarchical averaging's exact values between machines,
the one-peer vs allreduce comparison, the network in the result), and ``bench mlp
--sweep-bandwidth`` at two rates with a slow node, whose own rate every point records. The flag
errors and the sweep's table need no namespaces and run everywhere.
"""

from __future__ import annotations

import json

import pytest

from asyncddp.bench import render
from asyncddp.bench.results import ModelBenchResult, ModelRun
from asyncddp.bench.sweep import BandwidthSweep, SweepPoint, parse_bandwidths
from asyncddp.errors import ConfigError
from asyncddp.launcher import netns
from asyncddp.launcher.emulate import PREFIX
from tests.cli import asyncddp, invoke



def need_namespaces() -> None:
    reason = netns.netns_missing_reason()
    if reason:
        print(f"skipping the emulated bench test: {reason}")
        pytest.skip(reason)


def assert_nothing_left(pid: int) -> None:
    assert [name for name in netns.list_namespaces() if name.startswith(f"{PREFIX}-{pid}-")] == []


@pytest.mark.timeout(180)
def test_comm_across_two_nodes_of_two_ranks():
    need_namespaces()
    done = asyncddp("bench", "comm", "--emulate", "nodes=2,ranks_per_node=2,bandwidth=10gbit", "-b", "4K",
                    "-e", "16K", "--iters", "2", "--warmup", "1", "--json", "--ops",
                    "neighbor_allreduce_one_peer,hierarchical_neighbor_allreduce,allreduce", timeout=150)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["num_ranks"], data["host"], data["num_wrong"]) == (4, "emu0", 0)  # -np: every slot
    ops = ("neighbor_allreduce_one_peer", "hierarchical_neighbor_allreduce", "allreduce")
    assert [(row["op"], row["size_bytes"]) for row in data["rows"]] == [(op, s) for op in ops for s in (4096, 16384)]
    for row in data["rows"]:
        assert row["num_wrong"] == 0, row
        factor = 1.5 if row["op"] == "allreduce" else 1.0  # 2 machines: Exp-2 over machines has degree 1
        assert row["busbw_gbs"] == pytest.approx(row["algbw_gbs"] * factor, rel=1e-3, abs=1e-6)
    rows = {(row["op"], row["size_bytes"]): row for row in data["rows"]}
    assert [c["size_bytes"] for c in data["one_peer_vs_allreduce"]] == [4096, 16384]
    for c in data["one_peer_vs_allreduce"]:
        one_peer, allreduce = rows["neighbor_allreduce_one_peer", c["size_bytes"]], rows["allreduce", c["size_bytes"]]
        # the report rounds ratios to 3 decimals
        assert c["speedup"] == pytest.approx(allreduce["time_us"] / one_peer["time_us"], abs=5.01e-4)
        assert c["raw_speedup"] == pytest.approx(allreduce["raw_time_us"] / one_peer["raw_time_us"], abs=5.01e-4)
    assert data["network"]["spec"] == "nodes=2,ranks_per_node=2,bandwidth=10gbit"
    assert [(n["node"], n["ranks"], n["rate"]) for n in data["network"]["nodes"]] == [
        (0, [0, 1], "10gbit"), (1, [2, 3], "10gbit")]
    assert_nothing_left(done.pid)


@pytest.mark.timeout(240)
def test_sweep_records_each_rate_and_the_slow_node(tmp_path):
    need_namespaces()
    plot = tmp_path / "sweep.png"
    done = asyncddp("bench", "mlp", "--emulate", "nodes=2,slow_node=1:500mbit", "--sweep-bandwidth",
                    "10gbit,1gbit", "--methods", "neighbor-one-peer", "--batch-size", "4", "--image-size", "32",
                    "--iters", "2", "--warmup", "1", "--json", "--plot", str(plot), timeout=220)
    assert done.returncode == 0, done.stderr
    sweep = BandwidthSweep.from_dict(json.loads(done.stdout))
    assert (sweep.model, sweep.num_ranks, sweep.methods) == ("mlp", 2, ("neighbor-one-peer",))
    assert [point.bandwidth for point in sweep.points] == ["1gbit", "10gbit"]  # slowest first
    for point in sweep.points:
        (run,) = point.result.runs
        assert run.ok and run.num_ranks == 2 and run.img_s_total > 0, run
        network = point.result.network
        assert network.spec == f"nodes=2,ranks_per_node=1,bandwidth={point.bandwidth},slow_node=1:500mbit"
        assert [(link.node, link.ranks, link.rate) for link in network.nodes] == [
            (0, (0,), point.bandwidth), (1, (1,), "500mbit")]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert_nothing_left(done.pid)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,message", [
    (("--sweep-bandwidth", "1gbit"), "--sweep-bandwidth sets the links of an emulated cluster: add --emulate"),
    (("--emulate", "nodes=2", "--sweep-bandwidth", "1gbit,100mbps"), "--sweep-bandwidth '100mbps' is not a rate"),
    (("--emulate", "nodes=2", "--sweep-bandwidth", " , "), "give link rates separated by commas"),
    (("--emulate", "nodes=2", "--np", "1,2", "--sweep-bandwidth", "1gbit"), "a sweep runs at one rank count"),
])
def test_sweep_flag_errors_are_one_line_before_any_launch(args, message):
    done = invoke("bench", "mlp", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_parse_bandwidths_sorts_and_dedups():
    assert parse_bandwidths("10gbit, 200mbit,1gbit,1000mbit") == (2 * 10**8, 10**9, 10**10)
    with pytest.raises(ConfigError, match="'5bit' is not a rate of at least 8kbit"):
        parse_bandwidths("5bit")


def _point(bandwidth_bps: int, rates: dict[str, float | None]) -> SweepPoint:
    runs = tuple(ModelRun(method, 4, img_s_total=img_s, iter_ms=400 / img_s) if img_s is not None else
                 ModelRun(method, 4, error="BenchError: boom") for method, img_s in rates.items())
    return SweepPoint(bandwidth_bps, ModelBenchResult("mlp", "cpu", 8, 32, 1, 2, num_parameters=2_270_000, runs=runs))


def test_sweep_table_shows_img_s_and_speed_against_ddp_per_rate(tmp_path):
    sweep = BandwidthSweep("mlp", 4, ("ddp", "neighbor-one-peer", "win-put"), (
        _point(2 * 10**8, {"ddp": 10.0, "neighbor-one-peer": 25.0, "win-put": None}),
        _point(10**10, {"ddp": 40.0, "neighbor-one-peer": 50.0})))
    assert render.sweep_rows(sweep) == [["ddp", "10.0", "40.0"], ["neighbor-one-peer", "25.0 (2.50x)", "50.0 (1.25x)"],
                                        ["win-put", "failed", "-"]]
    assert BandwidthSweep.from_dict(json.loads(json.dumps(sweep.to_dict()))) == sweep
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(render.sweep_table(sweep))
    text = console.export_text()
    assert "200mbit img/s" in text and "10gbit img/s" in text
    assert "# win-put at 200mbit: BenchError: boom" in text
    path = tmp_path / "sweep.png"
    render.sweep_plot(sweep, str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_default_rank_count_is_every_slot_of_the_emulated_cluster(tmp_path):
    from asyncddp.bench.network import default_num_ranks, network_of
    from asyncddp.launcher.run_config import RunOptions

    assert default_num_ranks(RunOptions(), 2) == 2
    assert default_num_ranks(RunOptions(emulate="nodes=4,ranks_per_node=2"), 2) == 8
    config = tmp_path / "cluster.yaml"
    config.write_text("emulate: nodes=3,bandwidth=1gbit\n")
    assert default_num_ranks(RunOptions(config=str(config)), "1,2") == 3
    # --emulate wins over the config's, as in the launch itself.
    assert network_of(RunOptions(config=str(config), emulate="nodes=2"), 2).spec == "nodes=2,ranks_per_node=1"
    assert network_of(RunOptions(), 2) is None
