"""Hostfile and -H parsing, slot maps: pure functions checked with literal values."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncddp.errors import HostfileError
from asyncddp.launcher.hosts import (
    HostSpec,
    is_local_host,
    launches_over_ssh,
    mpirun_host_name,
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
    assert is_local_host("localhost") and is_local_host("127.0.0.1") and is_local_host("::1")
    # mpirun starts ranks locally only for these; it reaches 127.0.0.2 over ssh like a remote host.
    assert not is_local_host("127.0.0.2")
    assert not is_local_host("10.0.0.1") and not is_local_host("node1")


def test_loopback_with_its_own_ssh_port_is_reached_over_ssh_under_an_alias():
    assert not launches_over_ssh(HostSpec("127.0.0.1", 2))
    assert mpirun_host_name(HostSpec("127.0.0.1", 2)) == "127.0.0.1"
    tunnel = HostSpec("127.0.0.1", 2, ssh_port=2222)
    assert launches_over_ssh(tunnel) and launches_over_ssh(HostSpec("localhost", 1, ssh_user="bob"))
    assert mpirun_host_name(tunnel) == "asyncddp-127-0-0-1-port2222.invalid"
    assert mpirun_host_name(HostSpec("node1", 1, ssh_port=2222)) == "node1"
    assert launches_over_ssh(HostSpec("127.0.0.2", 1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-oProxyCommand=touch slots=1\n", "hosts.txt:1: host '-oProxyCommand=touch' is not a host name or IP address"),
        ("node%h\n", "hosts.txt:1: host 'node%h' is not a host name or IP address"),
        ("a..b\n", "hosts.txt:1: host 'a..b' is not a host name"),
        ("node1 slots=99999999999999999999999\n", "hosts.txt:1: slots='99999999999999999999999' is not a positive whole number (at most 1048576)"),
        ("node1 slots=2000000\n", "hosts.txt:1: slots='2000000' is not a positive whole number"),
        ("node1 slots=\u00b2\n", "hosts.txt:1: slots='\u00b2' is not a positive whole number"),
        ("node1 slots=04\n", "hosts.txt:1: slots='04' is not a positive whole number"),
    ],
)
def test_hostfile_names_and_counts_are_validated(text, message):
    with pytest.raises(HostfileError) as caught:
        parse_hostfile_text(text, "hosts.txt")
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("text", ["a:2,b\nProxyCommand x", "a,-oProxyCommand=x", "a,b c:2", "x" * 300])
def test_host_list_names_are_validated(text):
    with pytest.raises(HostfileError, match=r"^-H entry \d .* is not a host name or IP address"):
        parse_host_list(text)


def test_valid_names_and_addresses_pass():
    hosts = parse_hostfile_text("gpu-07.cluster.example slots=8\nnode_3\n10.0.0.5\nfd00::2\nNODE1\n", "h")
    assert [host.name for host in hosts] == ["gpu-07.cluster.example", "node_3", "10.0.0.5", "fd00::2", "NODE1"]


def test_huge_or_endless_hostfile_is_one_line_not_memory(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"# " + b"x" * (17 << 20))
    with pytest.raises(HostfileError, match=r"is larger than 16 MiB, more than any text file needs; check the --hostfile"):
        parse_hostfile(big)
    with pytest.raises(HostfileError, match=r"^hostfile /dev/zero is a character device, not a file; give a text file "
                                            r"with --hostfile$"):
        parse_hostfile("/dev/zero")


def test_every_shipped_hostfile_loads():
    files = sorted((ROOT / "hostfiles").iterdir())
    assert files, "hostfiles/ is empty"
    loaded = {path.name: parse_hostfile(path) for path in files}
    assert [(h.name, h.slots, h.max_slots) for h in loaded["localhost"]] == [("localhost", 4, None)]
    assert [(h.name, h.slots, h.max_slots) for h in loaded["two-nodes.example"]] == [
        ("node1", 4, None), ("node2", 4, 8)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "a\nHost *\n  ProxyCommand x"}, "api:1: host 'a\\nHost *\\n  ProxyCommand x' is not a host name"),
        ({"ssh_user": "bob\nProxyCommand x"}, "api:1: user 'bob\\nProxyCommand x' is not a login name"),
        ({"ssh_port": 0}, "api:1: an ssh port must be a whole number from 1 to 65535, got 0"),
        ({"identity_file": "/k/id\nProxyCommand x"}, "api:1: path '/k/id\\nProxyCommand x' holds '\\n'"),
        ({"python": "/usr/bin/python\0"}, "api:1: '/usr/bin/python\\x00' holds the control character"),
    ],
)
def test_hostspec_built_in_code_is_validated_too(fields, message):
    """A library caller's HostSpec never reaches an ssh_config line or an argv unchecked."""
    with pytest.raises(HostfileError) as caught:
        HostSpec(**{"name": "a", "slots": 1, "source": "api:1", **fields})
    assert str(caught.value).startswith(message), str(caught.value)


def test_an_ipv6_address_reaches_mpirun_without_its_colons():
    # mpirun reads `--host fd00::2:4` at its first colon (an empty host name, reached over ssh):
    # this machine's ::1 is given as localhost, another machine's address under an alias that
    # the generated ssh_config maps back to it.
    from asyncddp.launcher.plan import ssh_config_text

    (local,) = parse_host_list("[::1]:2")
    assert not launches_over_ssh(local) and mpirun_host_name(local) == "localhost"
    (remote,) = parse_host_list("[fd00::2]:4")
    assert launches_over_ssh(remote) and mpirun_host_name(remote) == "asyncddp-fd00--2-port22.invalid"
    assert "Host asyncddp-fd00--2-port22.invalid\n    HostName fd00::2\n" in ssh_config_text((remote,), None)
    assert mpirun_host_name(HostSpec("fd00::2", 1, ssh_port=2200)) == "asyncddp-fd00--2-port2200.invalid"
    assert mpirun_host_name(HostSpec("::1", 1, ssh_port=2222)) == "asyncddp---1-port2222.invalid"
