"""A bench refuses sizes that cannot fit in this machine's memory before any rank starts:
``bench comm --max-bytes`` (every rank's buffers) and a model bench's input batch."""

from __future__ import annotations

import json

import pytest

from asyncddp.bench.memory import (available_bytes, check_batch_memory, check_comm_memory, comm_bytes_per_byte,
                                   format_bytes)
from asyncddp.bench.results import OPS
from asyncddp.bench.runner import ranks_on_this_machine
from asyncddp.cli.main import main
from asyncddp.errors import ConfigError
from asyncddp.launcher.run_config import RunOptions

GIB = 1024**3


def test_available_memory_is_memavailable_capped_by_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_bytes(meminfo, cgroup) == 20000000 * 1024  # no cgroup files: MemAvailable
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("1000\n")
    assert available_bytes(meminfo, cgroup) == 20000000 * 1024  # no limit
    (cgroup / "memory.max").write_text(f"{4 * GIB}\n")
    assert available_bytes(meminfo, cgroup) == 4 * GIB - 1000
    assert available_bytes(tmp_path / "none", tmp_path / "none") is None  # not Linux: no check


def test_the_peak_factors_grow_with_the_degree_and_the_float64_copies():
    assert comm_bytes_per_byte("neighbor_allreduce", 2, 4) == 13  # 1 + 2·1 + 5·2; measured 13.3
    assert comm_bytes_per_byte("neighbor_allreduce", 4, 4) == 15  # degree 2; measured 15.3
    assert comm_bytes_per_byte("neighbor_allreduce", 2, 8) == 8  # float64; measured 8.1
    assert comm_bytes_per_byte("win_put", 8, 4) == 20  # 1 + 3·3 + 5·2
    assert max(OPS, key=lambda op: comm_bytes_per_byte(op, 2, 4)) == "win_put"


def test_comm_sizes_that_cannot_fit_are_refused_naming_the_flag_and_the_limit():
    check_comm_memory(OPS, 64 * 1024**2, 2, 4, 2, 20 * GIB, "64M")  # the default fits
    check_comm_memory(OPS, 64 * GIB, 2, 4, 0, 20 * GIB, "64G")  # no rank here: nothing to judge
    check_comm_memory(OPS, 64 * GIB, 2, 4, 2, None, "64G")  # memory unknown
    with pytest.raises(ConfigError) as caught:
        check_comm_memory(OPS, 64 * GIB, 2, 4, 2, 20 * GIB, "64G")
    assert str(caught.value) == ("--max-bytes 64G: win_put at that size needs about 1.75 TiB on this machine (14 x "
                                 "the size per rank, 2 rank(s) here) and 20 GiB is available; give --max-bytes "
                                 "731M or less")
    with pytest.raises(ConfigError, match=r"^--max-bytes 1G: allgather at that size .* give --max-bytes 330M or"):
        check_comm_memory(("allgather", "broadcast"), GIB, 4, 4, 4, 10 * GIB, "1G")


def test_an_input_batch_that_cannot_fit_is_refused():
    check_batch_memory(32, 224, 2, 20 * GIB)
    with pytest.raises(ConfigError) as caught:
        check_batch_memory(99999999999, 32, 2, 20 * GIB)
    assert str(caught.value) == ("--batch-size 99999999999 --image-size 32: the input batch alone needs 2.18 PiB on "
                                 "this machine (2 rank(s) here) and 20 GiB is available; give --batch-size 873813 "
                                 "or less (or smaller images)")


def test_only_the_ranks_placed_on_this_machine_count():
    assert ranks_on_this_machine(3, RunOptions()) == 3
    assert ranks_on_this_machine(4, RunOptions(host_list="localhost:1,node9.invalid:3")) == 1
    assert format_bytes(1536 * 1024**2) == "1.5 GiB" and format_bytes(12) == "12 B"


@pytest.mark.parametrize("argv, starts", [
    (["bench", "comm", "--max-bytes", "999999G", "--json"], "--max-bytes 999999G: "),
    (["bench", "mlp", "--batch-size", "99999999999", "--methods", "local,allreduce", "-np", "2", "--json"],
     "--batch-size 99999999999 --image-size 224: the input batch alone needs "),
    (["bench", "straggler", "--image-size", "9999999", "--json"], "--batch-size 32 --image-size 9999999: "),
])
def test_the_cli_refuses_before_any_launch(capsys, monkeypatch, argv, starts):
    def no_launch(*_args, **_kwargs):
        raise AssertionError("a rank was started")

    monkeypatch.setattr("asyncddp.launcher.job.run_plan", no_launch)
    with pytest.raises(SystemExit) as ended:
        main(argv)
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert ended.value.code == 2 and document["exit_code"] == 2 and document["error_type"] == "ConfigError"
    assert document["error"].startswith(starts) and err == f"asyncddp: error: {document['error']}\n"
