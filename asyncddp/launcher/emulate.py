"""An emulated cluster on one machine: N network namespaces behind a shaped switch, and mpirun across them.

``emulated_cluster(spec)`` builds, for an ``EmulateSpec``, one namespace per node (``<tag>-n<i>``,
hostname ``emu<i>``, interface ``eth0`` at 10.232.X.(i+1)/24) and one more (``<tag>-sw``) holding a
Linux bridge that every node's veth plugs into, like machines on a switch. The bridge lives in a
namespace of its own rather than the root namespace: nothing of the emulation ever appears among the
machine's real interfaces, the host's firewall and bridge-netfilter settings cannot touch its
traffic, and deleting the namespaces removes every veth and the bridge with them.

Shaping is egress on both ends of each node's link, which is how a full-duplex link to a switch
behaves: on the node's ``eth0`` a netem qdisc (one-way latency, loss) with a tbf child (the rate),
and on the bridge's port towards the node a tbf at the same rate, so traffic into a node is capped
too (several senders cannot push more than the node's link into it).

mpirun itself runs inside node 0 (like a user logged in on the first machine); for the other
nodes Open MPI's rsh launcher calls the cluster's agent, ``AGENT HOST COMMAND...``, a script
written from validated names that runs COMMAND in HOST's namespace under HOST's hostname.
Everything is removed when the context ends (exceptions, and SIGINT, SIGTERM or SIGHUP under the
launcher's one signal policy, ``stop_signals``), by a guard process when this one is killed
outright, and by the next run when even the guard was killed (``netns``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import stat
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from asyncddp.errors import LaunchError
from asyncddp.launcher import stop_signals
from asyncddp.launcher.emulate_spec import EmulateSpec, format_rate
from asyncddp.launcher.plan import LaunchPlan
from asyncddp.launcher.netns import (NETNS_ETC, STATE_ROOT, check_name, new_tag, remove_stale, remove_tag,
                                     require_netns, run_tool, start_guard, stop_guard, uts_prefix, write_owner)

__all__ = ["PREFIX", "EmulatedNode", "EmulatedCluster", "plan_cluster", "new_cluster", "agent_script",
           "build_cluster", "emulate_plan", "emulated_cluster", "NETEM_MISSING"]

PREFIX = "addpe"
INTERFACE = "eth0"
BRIDGE = "br0"
TBF_LATENCY = "50ms"  # the longest a packet may wait in tbf before it is dropped (sizes its queue)
_UNSHAPED_BPS = 10**10  # sizes netem's queue when only latency is set


@dataclass(frozen=True)
class EmulatedNode:
    index: int
    hostname: str
    namespace: str
    address: str
    rate_bps: int | None


@dataclass(frozen=True)
class EmulatedCluster:
    """The names, addresses and link settings of one emulated cluster (what ``--dry-run`` shows)."""

    spec: EmulateSpec
    tag: str
    nodes: tuple[EmulatedNode, ...]
    switch_namespace: str
    subnet: str

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.tag

    @property
    def agent(self) -> str:
        return str(self.state_dir / "agent")

    @property
    def hostnames(self) -> list[str]:
        return [node.hostname for node in self.nodes]

    def host_list(self) -> str:
        """``emu0:K,emu1:K,...`` for mpirun's ``--host``."""
        return ",".join(f"{node.hostname}:{self.spec.ranks_per_node}" for node in self.nodes)

    def hosts_text(self) -> str:
        """The /etc/hosts every node sees."""
        return "127.0.0.1 localhost\n" + "".join(f"{node.address} {node.hostname}\n" for node in self.nodes)

    def launch_prefix(self, index: int = 0) -> list[str]:
        """argv prefix running a command on node ``index`` (mpirun runs on node 0)."""
        node = self.nodes[index]
        return uts_prefix(node.namespace, node.hostname)

    def mpi_groups(self, family: str = "openmpi", major: int = 5, prefix: str | None = None) -> list[tuple[str, ...]]:
        """mpirun flags that launch through the agent and keep MPI's TCP on the emulated links.

        Ranks of one node use shared memory; between nodes only TCP is allowed (pml ob1, no UCX,
        which could pick another path), on the nodes' subnet. Inside a node namespace there is no
        interface but ``lo`` and ``eth0``, so TCP between nodes cannot bypass the shaped links.
        """
        if family == "mpich":
            return [("-launcher", "rsh"), ("-launcher-exec", self.agent), ("-iface", INTERFACE)]
        groups: list[tuple[str, ...]] = []
        if prefix:
            groups.append(("--prefix", prefix))  # remote daemons get no login shell to find prted
        shm = "sm" if major >= 5 else "vader"
        groups += [("--mca", "plm_ssh_agent" if major >= 5 else "plm_rsh_agent", self.agent),
                   ("--mca", "pml", "ob1"), ("--mca", "btl", f"self,{shm},tcp"),
                   ("--mca", "btl_tcp_if_include", self.subnet),
                   # PRRTE matches its out-of-band interfaces by name only, not by subnet.
                   ("--mca", "oob_tcp_if_include", INTERFACE)]
        return groups

    def setup_commands(self) -> list[tuple[str, ...]]:
        """Every iproute2/tc command that builds the cluster, in order (none touches the root namespace)."""
        switch = self.switch_namespace
        commands: list[tuple[str, ...]] = [
            ("ip", "netns", "add", switch),
            ("ip", "-n", switch, "link", "set", "lo", "up"),
            ("ip", "-n", switch, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0"),
            ("ip", "-n", switch, "link", "set", BRIDGE, "up"),
        ]
        for node in self.nodes:
            port = f"p{node.index}"
            commands += [
                ("ip", "netns", "add", node.namespace),
                ("ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", INTERFACE,
                 "netns", node.namespace),
                ("ip", "-n", switch, "link", "set", port, "master", BRIDGE),
                ("ip", "-n", switch, "link", "set", port, "up"),
                ("ip", "-n", node.namespace, "link", "set", "lo", "up"),
                ("ip", "-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", INTERFACE),
                ("ip", "-n", node.namespace, "link", "set", INTERFACE, "up"),
            ]
            commands += self._shaping(node, port)
        return commands

    def _shaping(self, node: EmulatedNode, port: str) -> list[tuple[str, ...]]:
        spec, rate = self.spec, node.rate_bps
        commands: list[tuple[str, ...]] = []
        egress = ("tc", "-n", node.namespace, "qdisc", "add", "dev", INTERFACE)
        parent: tuple[str, ...] = ("root",)
        if spec.latency_s or spec.loss_percent:
            # netem's queue holds every packet in flight for the delay: size it to the link's
            # bandwidth-delay product or it silently drops and throughput collapses.
            in_flight = (rate or _UNSHAPED_BPS) / 8 * spec.latency_s / 1500
            netem = ["netem", "limit", str(max(1000, math.ceil(2 * in_flight)))]
            if spec.latency_s:
                netem += ["delay", f"{round(spec.latency_s * 1e6)}us"]
            if spec.loss_percent:
                netem += ["loss", f"{spec.loss_percent:g}%"]
            commands.append((*egress, "root", "handle", "1:", *netem))
            parent = ("parent", "1:1", "handle", "10:")
        if rate is not None:
            tbf = _tbf(rate)
            commands.append((*egress, *parent, *tbf))
            commands.append(("tc", "-n", self.switch_namespace, "qdisc", "add", "dev", port, "root", *tbf))
        return commands

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "tag": self.tag, "switch_namespace": self.switch_namespace,
                "subnet": self.subnet, "agent": self.agent, "nodes": [asdict(node) for node in self.nodes],
                "setup_commands": [list(command) for command in self.setup_commands()]}

    def describe(self) -> str:
        """Nodes, links and setup commands for ``--dry-run``."""
        lines = [f"emulated cluster {self.spec.describe()} (subnet {self.subnet}, switch namespace "
                 f"{self.switch_namespace}, mpirun runs on {self.nodes[0].hostname}):"]
        for node in self.nodes:
            link = format_rate(node.rate_bps) if node.rate_bps else "unshaped"
            extra = "".join([f", +{self.spec.latency_s * 1e3:g} ms one way" if self.spec.latency_s else "",
                             f", {self.spec.loss_percent:g}% loss" if self.spec.loss_percent else ""])
            lines.append(f"    {node.hostname:<6} {node.address:<15} namespace {node.namespace}  "
                         f"{self.spec.ranks_per_node} rank(s), link {link}{extra}")
        lines += ["", "setup commands:"] + [f"    {shlex.join(command)}" for command in self.setup_commands()]
        return "\n".join(lines)


def _tbf(rate_bps: int) -> tuple[str, ...]:
    # The bucket holds ~4 ms of line rate (at least 32 KiB): enough for full-size TSO packets and
    # timer slack, small enough that a 16 MB transfer runs at the configured rate.
    burst = max(32 * 1024, rate_bps // 8 * 4 // 1000)
    return ("tbf", "rate", format_rate(rate_bps), "burst", str(burst), "latency", TBF_LATENCY)


def plan_cluster(spec: EmulateSpec, tag: str) -> EmulatedCluster:
    """Names, addresses and rates for ``spec`` under ``tag``: a pure function, nothing is created."""
    check_name(tag)
    # Addresses exist only inside this run's namespaces; a per-run third octet keeps two runs'
    # logs and dry-runs from looking alike.
    octet = 1 + zlib.crc32(tag.encode()) % 254
    nodes = tuple(EmulatedNode(index, f"emu{index}", f"{tag}-n{index}", f"10.232.{octet}.{index + 1}",
                               spec.node_rate(index)) for index in range(spec.num_nodes))
    return EmulatedCluster(spec, tag, nodes, f"{tag}-sw", f"10.232.{octet}.0/24")


def agent_script(cluster: EmulatedCluster) -> str:
    """mpirun's rsh agent: ``AGENT HOST COMMAND...`` runs COMMAND on HOST as ssh would.

    Like ssh, it joins the command words into one line for a shell (mpirun quotes them for that);
    the node's namespace comes from a fixed table of validated names, and the hostname and command
    reach the inner shell as arguments, never as part of its script.
    """
    cases = "".join(f"    {check_name(node.hostname)}) ns={check_name(node.namespace)} ;;\n" for node in cluster.nodes)
    return ("#!/bin/sh\n"
            f"# mpirun's rsh agent for the emulated cluster {cluster.tag}: AGENT HOST COMMAND...\n"
            'case "$1" in\n' + cases
            + '    *) echo "asyncddp emulate agent: no emulated node named $1" >&2; exit 255 ;;\n'
            "esac\n"
            'host=$1\nshift\n'
            'exec ip netns exec "$ns" unshare --uts -- sh -c \''
            'printf %s "$0" > /proc/sys/kernel/hostname && exec sh -c "$1"\' "$host" "$*"\n')


def build_cluster(cluster: EmulatedCluster) -> None:
    """Create what ``cluster`` describes; the caller removes it (``remove_tag``) even if this fails."""
    for node in cluster.nodes:
        etc = NETNS_ETC / node.namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(cluster.hosts_text())
    agent = Path(cluster.agent)
    agent.write_text(agent_script(cluster))
    agent.chmod(stat.S_IRWXU)
    for command in cluster.setup_commands():
        try:
            run_tool(command, "--emulate")
        except LaunchError as error:
            if "netem" in command and "unknown" in str(error):
                raise LaunchError(NETEM_MISSING) from None
            raise


NETEM_MISSING = ("--emulate: latency and loss need the kernel's netem qdisc, which this kernel lacks "
                 "(tc: 'Specified qdisc kind is unknown'): load it with 'modprobe sch_netem' "
                 "(CONFIG_NET_SCH_NETEM), or leave latency and loss out of --emulate")


def new_cluster(spec: EmulateSpec, prefix: str = PREFIX) -> EmulatedCluster:
    """The plan of a cluster for ``spec`` under a tag of this process (nothing is created)."""
    return plan_cluster(spec, new_tag(prefix))


def emulate_plan(plan: LaunchPlan, cluster: EmulatedCluster, cpu_count: int | None = None,
                 environ: dict[str, str] | None = None) -> LaunchPlan:
    """``plan`` (made for the hosts ``emu0:K,...``) turned into a launch across ``cluster``.

    mpirun runs inside node 0; the ssh agent and ssh_config the plan made for "remote" hosts are
    replaced by the cluster's agent and TCP flags. All ranks share this machine's cores, so with
    more ranks than cores waiting ranks yield (as ``build_plan`` does for local jobs).
    """
    flavor = plan.flavor
    ssh = {"plm_ssh_agent", "plm_rsh_agent"}
    groups = [group for group in plan.groups
              if not (group[0] == "--mca" and group[1] in ssh) and group[0] not in ("-launcher", "-launcher-exec")]
    at = next(index for index, group in enumerate(groups) if group[0] in ("--host", "-hosts")) + 1
    groups[at:at] = cluster.mpi_groups(flavor.family, flavor.major)
    groups.insert(0, tuple(cluster.launch_prefix(0)))
    env = dict(plan.env)
    idle = flavor.implementation.idle_env()
    seen = os.environ if environ is None else environ
    if (cpu_count is not None and len(plan.rank_hosts) > cpu_count
            and not any(name in env or name in seen for name in idle)):
        env.update(idle)
    return replace(plan, argv=tuple(part for group in groups for part in group), groups=tuple(groups),
                   env=env, files={})


@contextlib.contextmanager
def emulated_cluster(spec: EmulateSpec | EmulatedCluster, prefix: str = PREFIX):
    """Build the cluster for ``spec`` (or an already planned one), yield its ``EmulatedCluster``,
    remove it all afterwards.

    Raises ``LaunchError`` (one line) without root or iproute2. A stop signal raises
    ``stop_signals.Stopped`` here (a job inside records it instead) so the removal runs, and the
    removal itself is not cut short by another; when this process is killed outright its guard
    process removes everything.
    """
    require_netns("--emulate")
    with stop_signals.handled():
        remove_stale(prefix)
        cluster = spec if isinstance(spec, EmulatedCluster) else new_cluster(spec, prefix)
        write_owner(cluster.tag)
        guard = start_guard(cluster.tag)
        try:
            build_cluster(cluster)
            yield cluster
        finally:
            with stop_signals.deferred():
                remove_tag(cluster.tag)
                stop_guard(guard)
