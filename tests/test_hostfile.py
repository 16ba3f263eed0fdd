"""Hostfile and -H parsing, slot maps: pure functions checked with literal values."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncddp.errors import HostfileError
from asyncddp.launcher.hosts import (
    HostSpec,
    is_local_host,
    parse_host_list,
    parse_hostfile,
    parse_hostfile_text,
    rank_hosts,
    total_slots,
)

ROOT = Path(__file__).resolve().parent.parent


def test_hostfile_text_with_comments_blank_lines_and_max_slots():
    text = "# cluster\n\nnode1 slots=4\n  node2 slots=2 max_slots=6  # big one\nnode3\n"
    assert parse_hostfile_text(text, "hosts.txt") == [
        HostSpec("node1", 4, source="hosts.txt:3"),
        HostSpec("node2", 2, 6, source="hosts.txt:4"),
        HostSpec("node3", 1, source="hosts.txt:5"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node1 slots=4\nnode2 cpus=4\n", "hosts.txt:2: unknown token 'cpus=4' after host 'node2'"),
        ("node1 slots=0\n", "hosts.txt:1: slots='0' is not a positive whole number"),
        ("node1 slots=four\n", "hosts.txt:1: slots='four' is not a positive whole number"),
        ("node1 slots=4 max_slots=2\n", "hosts.txt:1: max_slots=2 is below slots=4"),
        ("a slots=1\nb slots=1\na slots=2\n", "hosts.txt:3: host 'a' is already listed at hosts.txt:1"),
        ("# nothing\n\n", "hosts.txt: no hosts in this hostfile"),
    ],
)
def test_hostfile_errors_name_file_and_line(text, message):
    with pytest.raises(HostfileError) as caught:
        parse_hostfile_text(text, "hosts.txt")
    assert str(caught.value).startswith(message)


def test_missing_hostfile_is_an_error_not_localhost(tmp_path):
    with pytest.raises(HostfileError, match=r"hostfile .*nope does not exist; check the --hostfile path"):
        parse_hostfile(tmp_path / "nope")


def test_host_list_short_form():
    assert parse_host_list("a:4,b:2,c") == [
        HostSpec("a", 4, source="-H a"), HostSpec("b", 2, source="-H b"), HostSpec("c", 1, source="-H c"),
    ]
    assert parse_host_list("fd00::2")[0] == HostSpec("fd00::2", 1, source="-H fd00::2")


@pytest.mark.parametrize(
    ("text", "message"),
    [("a:0", "-H entry 1 ('a:0'): slots='0'"), ("a:4,,b", "-H entry 2 (''): empty host name"),
     ("a:x", "-H entry 1 ('a:x'): slots='x'"), ("a:2,a:2", "-H a: host 'a' is already listed")],
)
def test_host_list_errors(text, message):
    with pytest.raises(HostfileError) as caught:
        parse_host_list(text)
    assert str(caught.value).startswith(message)


def test_rank_hosts_fills_slots_in_order_then_balances_extra():
    hosts = [HostSpec("a", 2), HostSpec("b", 1)]
    assert total_slots(hosts) == 3
    assert rank_hosts(hosts, 2) == ["a", "a"]
    assert rank_hosts(hosts, 3) == ["a", "a", "b"]
    assert rank_hosts(hosts, 6) == ["a", "a", "a", "a", "b", "b"]


def test_local_host_names():
    assert is_local_host("localhost") and is_local_host("127.0.0.2") and is_local_host("::1")
    assert not is_local_host("10.0.0.1") and not is_local_host("node1")


def test_every_shipped_hostfile_loads():
    files = sorted((ROOT / "hostfiles").iterdir())
    assert files, "hostfiles/ is empty"
    loaded = {path.name: parse_hostfile(path) for path in files}
    assert [(h.name, h.slots, h.max_slots) for h in loaded["localhost"]] == [("localhost", 4, None)]
    assert [(h.name, h.slots, h.max_slots) for h in loaded["two-nodes.example"]] == [
        ("node1", 4, None), ("node2", 4, 8)]
