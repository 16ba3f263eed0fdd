"""The --emulate spec parser and the cluster plan: pure functions, literal expectations."""

from __future__ import annotations

import pytest

from asyncddp.errors import ConfigError
from asyncddp.launcher.emulate import agent_script, plan_cluster
from asyncddp.launcher.emulate_spec import EmulateSpec, format_rate, parse_emulate_spec, parse_rate


def test_full_spec():
    spec = parse_emulate_spec("nodes=4, ranks_per_node=2,bandwidth=1gbit,latency=5ms,loss=0.1%,"
                              "slow_node=2:200mbit,slow-node=0:1.5gbit")
    assert spec == EmulateSpec(num_nodes=4, ranks_per_node=2, bandwidth_bps=10**9, latency_s=0.005,
                               loss_percent=0.1, slow_nodes=((0, 1_500_000_000), (2, 200_000_000)))
    assert spec.num_ranks == 8
    assert [spec.node_rate(i) for i in range(4)] == [1_500_000_000, 10**9, 200_000_000, 10**9]
    assert spec.describe() == ("nodes=4,ranks_per_node=2,bandwidth=1gbit,latency=5ms,loss=0.1%,"
                               "slow_node=0:1500mbit,slow_node=2:200mbit")


def test_defaults_and_units():
    assert parse_emulate_spec("nodes=2") == EmulateSpec(num_nodes=2)
    assert parse_emulate_spec("nodes=2").node_rate(1) is None
    assert parse_rate("10gbit") == 10**10 and parse_rate("200MBIT") == 2 * 10**8 and parse_rate("64kbit") == 64000
    assert parse_emulate_spec("nodes=2,latency=250us").latency_s == 0.00025
    assert parse_emulate_spec("nodes=2,latency=0").latency_s == 0.0
    assert format_rate(10**9) == "1gbit" and format_rate(1_500_000) == "1500kbit" and format_rate(12345) == "12345bit"


@pytest.mark.parametrize("text, message", [
    ("", "--emulate: '' is not key=value; write e.g. nodes=4,ranks_per_node=2,bandwidth=1gbit,latency=1ms"),
    ("ranks_per_node=2", "--emulate: nodes=N is required, e.g. nodes=4,ranks_per_node=2,bandwidth=1gbit,latency=1ms"),
    ("nodes=0", "--emulate: nodes='0' must be a whole number from 1 to 64; write e.g. nodes=2"),
    ("nodes=2,nodes=3", "--emulate: nodes is given twice; keep one"),
    ("nodes=2,speed=1gbit", "--emulate: unknown key 'speed'; the keys are nodes, ranks_per_node, bandwidth, "
                            "latency, loss, slow_node"),
    ("nodes=2,bandwidth=100mbps", "--emulate: bandwidth='100mbps' is not a rate (tc reads 'bps' as bytes/s; "
                                  "write bits, e.g. 800mbit); write a number and one of bit/kbit/mbit/gbit/tbit, "
                                  "e.g. bandwidth=1gbit"),
    ("nodes=2,bandwidth=100", "--emulate: bandwidth='100' is not a rate; write a number and one of "
                              "bit/kbit/mbit/gbit/tbit, e.g. bandwidth=1gbit"),
    ("nodes=2,bandwidth=10bit", "--emulate: bandwidth='10bit' is below 8kbit, too slow for MPI to start; "
                                "write e.g. bandwidth=10mbit"),
    ("nodes=2,latency=5", "--emulate: latency='5' is not a duration; write a number and us/ms/s, e.g. latency=5ms"),
    ("nodes=2,latency=11s", "--emulate: latency='11s' is over 10 s, MPI would time out; write e.g. latency=50ms"),
    ("nodes=2,loss=0.01", "--emulate: loss='0.01' must be a percentage below 100 with a % sign, e.g. loss=0.1%"),
    ("nodes=2,slow_node=2:1gbit", "--emulate: slow_node=2:1gbit names no node (nodes are 0 to 1); "
                                  "write e.g. slow_node=1:200mbit"),
    ("nodes=2,slow_node=1:fast", "--emulate: slow_node=1:'fast' is not a rate; write a number and one of "
                                 "bit/kbit/mbit/gbit/tbit, e.g. slow_node=1:1gbit"),
    ("nodes=2,slow_node=1", "--emulate: slow_node='1' needs INDEX:RATE, e.g. slow_node=2:200mbit"),
    ("nodes=2,slow_node=1:1gbit,slow_node=1:2gbit", "--emulate: slow_node=1:... is given twice; keep one per node"),
    ("nodes=2,ranks_per_node=x", "--emulate: ranks_per_node='x' must be a whole number from 1 to 256; "
                                 "write e.g. ranks_per_node=2"),
])
def test_errors_name_the_flag_and_the_fix(text, message):
    with pytest.raises(ConfigError) as error:
        parse_emulate_spec(text)
    assert str(error.value) == message
    assert "\n" not in str(error.value)


def test_source_names_a_config_file():
    with pytest.raises(ConfigError, match=r"^cluster.yaml:7: emulate: nodes='x' must be"):
        parse_emulate_spec("nodes=x", source="cluster.yaml:7: emulate")


def test_plan_names_addresses_and_commands():
    spec = parse_emulate_spec("nodes=2,ranks_per_node=3,bandwidth=1gbit,latency=2ms,slow_node=1:200mbit")
    cluster = plan_cluster(spec, "addpe-42-0")
    octet = cluster.subnet.split(".")[2]
    assert cluster.subnet == f"10.232.{octet}.0/24" and 1 <= int(octet) <= 254
    assert [(n.hostname, n.namespace, n.address, n.rate_bps) for n in cluster.nodes] == [
        ("emu0", "addpe-42-0-n0", f"10.232.{octet}.1", 10**9),
        ("emu1", "addpe-42-0-n1", f"10.232.{octet}.2", 2 * 10**8)]
    assert cluster.host_list() == "emu0:3,emu1:3"
    assert cluster.hosts_text() == f"127.0.0.1 localhost\n10.232.{octet}.1 emu0\n10.232.{octet}.2 emu1\n"
    commands = [" ".join(command) for command in cluster.setup_commands()]
    assert commands[:4] == ["ip netns add addpe-42-0-sw", "ip -n addpe-42-0-sw link set lo up",
                            "ip -n addpe-42-0-sw link add br0 type bridge stp_state 0",
                            "ip -n addpe-42-0-sw link set br0 up"]
    assert commands[4:15] == [
        "ip netns add addpe-42-0-n0",
        "ip -n addpe-42-0-sw link add p0 type veth peer name eth0 netns addpe-42-0-n0",
        "ip -n addpe-42-0-sw link set p0 master br0",
        "ip -n addpe-42-0-sw link set p0 up",
        "ip -n addpe-42-0-n0 link set lo up",
        f"ip -n addpe-42-0-n0 addr add 10.232.{octet}.1/24 dev eth0",
        "ip -n addpe-42-0-n0 link set eth0 up",
        # 1 Gbit/s for 2 ms is 167 packets in flight: netem keeps its default 1000-packet queue.
        "tc -n addpe-42-0-n0 qdisc add dev eth0 root handle 1: netem limit 1000 delay 2000us",
        "tc -n addpe-42-0-n0 qdisc add dev eth0 parent 1:1 handle 10: tbf rate 1gbit burst 500000 latency 50ms",
        "tc -n addpe-42-0-sw qdisc add dev p0 root tbf rate 1gbit burst 500000 latency 50ms",
        "ip netns add addpe-42-0-n1"]
    assert commands[-1] == "tc -n addpe-42-0-sw qdisc add dev p1 root tbf rate 200mbit burst 100000 latency 50ms"
    assert all(not command.startswith(("ip link", "ip addr", "tc qdisc")) for command in commands)  # never the root namespace


def test_plan_without_shaping_and_with_loss_only():
    plain = plan_cluster(parse_emulate_spec("nodes=3"), "addpe-42-1")
    assert not any(command[0] == "tc" for command in plain.setup_commands())
    lossy = plan_cluster(parse_emulate_spec("nodes=1,loss=1%"), "addpe-42-2")
    assert [" ".join(c) for c in lossy.setup_commands() if c[0] == "tc"] == [
        "tc -n addpe-42-2-n0 qdisc add dev eth0 root handle 1: netem limit 1000 loss 1%"]
    deep = plan_cluster(parse_emulate_spec("nodes=1,bandwidth=10gbit,latency=50ms"), "addpe-42-3")
    netem = next(c for c in deep.setup_commands() if "netem" in c)
    assert netem[netem.index("limit") + 1] == "83334"  # 2 x 10 Gbit/s x 50 ms / 1500 B


def test_mpi_flags_and_agent():
    cluster = plan_cluster(parse_emulate_spec("nodes=2"), "addpe-42-0")
    agent = "/run/asyncddp-netns/addpe-42-0/agent"
    assert cluster.mpi_groups("openmpi", 5, prefix="/venv") == [
        ("--prefix", "/venv"), ("--mca", "plm_ssh_agent", agent), ("--mca", "pml", "ob1"),
        ("--mca", "btl", "self,sm,tcp"), ("--mca", "btl_tcp_if_include", cluster.subnet),
        ("--mca", "oob_tcp_if_include", "eth0")]
    assert cluster.mpi_groups("openmpi", 4)[:2] == [("--mca", "plm_rsh_agent", agent), ("--mca", "pml", "ob1")]
    assert cluster.mpi_groups("mpich", 4) == [("-launcher", "rsh"), ("-launcher-exec", agent), ("-iface", "eth0")]
    assert cluster.launch_prefix(1)[:7] == ["ip", "netns", "exec", "addpe-42-0-n1", "unshare", "--uts", "--"]
    assert cluster.launch_prefix(1)[-1] == "emu1"
    script = agent_script(cluster)
    assert "    emu0) ns=addpe-42-0-n0 ;;\n    emu1) ns=addpe-42-0-n1 ;;\n" in script
    assert script.endswith('exec ip netns exec "$ns" unshare --uts -- sh -c \'printf %s "$0" > '
                           '/proc/sys/kernel/hostname && exec sh -c "$1"\' "$host" "$*"\n')
