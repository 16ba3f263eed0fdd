"""The node probe of ``asyncddp doctor``: a self-contained script that describes one machine as JSON.

Doctor sends this file's text over SSH to the node's non-interactive Python (``python3 - '<json>'``,
the script on stdin, options as the one argument) so that it sees exactly the environment mpirun's
remote daemons will see. It therefore imports nothing outside the standard library and nothing from
asyncddp: a node without asyncddp must still answer. Anything that can hang or initialise a runtime
(importing torch, importing ``mpi4py.MPI`` which calls ``MPI_Init``, running ``mpirun``) runs in a
child process with a timeout. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import time

# Children inherit this environment; singleton MPI_Init refuses root without these.
_CHILD_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")

_TORCH_SNIPPET = r"""
import json
import torch
info = {"version": torch.__version__, "cuda_build": torch.version.cuda,
        "cuda_available": False, "gpus": [], "nccl": None}
if torch.cuda.is_available():
    info["cuda_available"] = True
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        info["gpus"].append({"name": props.name, "memory_bytes": props.total_memory})
    try:
        info["nccl"] = ".".join(str(part) for part in torch.cuda.nccl.version())
    except Exception:
        pass
print(json.dumps(info))
"""

_MPI4PY_SNIPPET = r"""
import json
from mpi4py import MPI
print(json.dumps({"library_version": MPI.Get_library_version().strip("\x00 \n"),
                  "standard": "%d.%d" % MPI.Get_version()}))
"""


def _run(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run a command; (exit code or None when missing / timed out, combined output)."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env={**_CHILD_ENV, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{type(error).__name__}: {error}"
    return done.returncode, done.stdout + done.stderr


def _python_json(snippet: str, timeout: float, env: dict | None = None) -> dict:
    code, out = _run([sys.executable, "-c", snippet], timeout, env)
    lines = out.strip().splitlines()
    if code == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    return {"error": (lines[-1] if lines else f"exit {code}")[:300]}


def _meminfo() -> dict:
    values = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return {"total_bytes": values.get("MemTotal"), "available_bytes": values.get("MemAvailable")}


def _os_name() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _shm_bytes() -> int | None:
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stats.f_blocks * stats.f_frsize


def _memlock() -> int | None:
    """``ulimit -l`` in bytes; None means unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def _package_version(name: str) -> str | None:
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        return None


def _nvml() -> dict | None:
    """GPU names, memory and driver through libnvidia-ml, when the driver is installed."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if lib.nvmlInit_v2() != 0:
        return None
    try:
        buffer = ctypes.create_string_buffer(96)
        lib.nvmlSystemGetDriverVersion(buffer, 96)
        driver = buffer.value.decode()
        count = ctypes.c_uint(0)
        lib.nvmlDeviceGetCount_v2(ctypes.byref(count))
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
            lib.nvmlDeviceGetName(handle, buffer, 96)
            memory = (ctypes.c_ulonglong * 3)()  # total, free, used
            lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory))
            gpus.append({"name": buffer.value.decode(), "memory_bytes": int(memory[0])})
        return {"driver": driver, "gpus": gpus}
    finally:
        lib.nvmlShutdown()


def parse_mpirun_version(text: str) -> dict:
    """Implementation and version from ``mpirun --version`` output (Open MPI, MPICH, Intel MPI)."""
    patterns = (
        (r"\(Open MPI\) (\S+)", "Open MPI"),
        (r"\(Open(?: |-)?RTE\) (\S+)", "Open MPI"),
        (r"Intel\(R\) MPI Library.*?Version (\S+)", "Intel MPI"),
        (r"HYDRA.*?Version:\s*(\S+)", "MPICH"),
    )
    for pattern, name in patterns:
        found = re.search(pattern, text, re.S)
        if found:
            return {"implementation": name, "version": found.group(1)}
    first = text.strip().splitlines()[0] if text.strip() else ""
    return {"implementation": first[:80] or None, "version": None}


def parse_ompi_cuda(text: str) -> bool | None:
    """Whether ``ompi_info --parsable --all`` says the library was built with CUDA support."""
    found = re.search(r"_built_with_cuda_support:value:(\w+)", text)
    return None if found is None else found.group(1) == "true"


def find_mpirun() -> str | None:
    """The mpirun a job would use on this node, by ``asyncddp.launcher.mpi.find_mpirun``'s rule
    (``$ASYNCDDP_MPIRUN``, then beside this Python, then PATH), restated because a node may lack
    asyncddp; tests hold the two to the same answers."""
    explicit = os.environ.get("ASYNCDDP_MPIRUN")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpirun")


def _mpi(options: dict) -> dict:
    """``options`` may carry what the launcher itself decided on this machine: ``mpirun``, the
    environment under which mpi4py loads its library (``mpi4py_env``) or why it cannot
    (``mpi4py_error``), and whether the implementation tolerates a dead rank (``fault_tolerance``)."""
    launcher = options.get("mpirun") or find_mpirun()
    info: dict = {"mpirun": launcher, "implementation": None, "version": None, "cuda_aware": None}
    if launcher:
        code, out = _run([launcher, "--version"], 20)
        if code == 0:
            info.update(parse_mpirun_version(out))
        ompi_info = os.path.join(os.path.dirname(launcher), "ompi_info")
        # Only Open MPI's own ompi_info speaks for it (Debian puts MPICH's mpirun beside Open MPI's tools).
        if info["implementation"] == "Open MPI" and os.access(ompi_info, os.X_OK):
            code, out = _run([ompi_info, "--parsable", "--all"], 30)
            info["cuda_aware"] = parse_ompi_cuda(out) if code == 0 else None
    if "fault_tolerance" in options:
        info["fault_tolerance"] = options["fault_tolerance"]
    info["mpi4py"] = _package_version("mpi4py")
    if info["mpi4py"] and options.get("mpi4py_error"):
        info["mpi4py_library"] = {"error": options["mpi4py_error"], "one_line": True}
    elif info["mpi4py"]:
        info["mpi4py_library"] = _python_json(_MPI4PY_SNIPPET, 30, options.get("mpi4py_env"))
    return info


def _interfaces_ip() -> list[dict] | None:
    code, out = _run(["ip", "-j", "-4", "addr"], 10)
    if code != 0:
        return None
    result = []
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                result.append(_interface(link["ifname"], addr["local"], addr["prefixlen"]))
    return result


def _interfaces_ioctl() -> list[dict]:
    """IPv4 addresses without iproute2: SIOCGIFADDR / SIOCGIFNETMASK on each interface."""
    import fcntl
    import struct

    result = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                addr = fcntl.ioctl(sock.fileno(), 0x8915, request)[20:24]
                mask = fcntl.ioctl(sock.fileno(), 0x891B, request)[20:24]
            except OSError:
                continue
            prefix = bin(int.from_bytes(mask, "big")).count("1")
            result.append(_interface(name, socket.inet_ntoa(addr), prefix))
    return result


def _interface(name: str, address: str, prefix: int) -> dict:
    network = ipaddress.ip_interface(f"{address}/{prefix}").network
    return {"name": name, "address": address, "subnet": str(network)}


def _reachable(peers: list[list], timeout: float) -> dict:
    """TCP connect to each ``[host, port]``: the path mpirun's daemons and the ranks will need."""
    result = {}
    for host, port in peers:
        start = time.monotonic()
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                pass
            result[f"{host}:{port}"] = {"ok": True, "ms": round(1000 * (time.monotonic() - start), 1)}
        except OSError as error:
            result[f"{host}:{port}"] = {"ok": False, "error": str(error) or type(error).__name__}
    return result


def probe(options: dict) -> dict:
    """Everything doctor wants to know about this machine."""
    path_dirs = os.environ.get("PATH", "")
    nvml = _nvml()
    torch = _python_json(_TORCH_SNIPPET, options.get("torch_timeout", 90))
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "memory": _meminfo(),
        "shm_bytes": _shm_bytes(),
        "memlock_bytes": _memlock(),
        "python": {"executable": sys.executable, "version": platform.python_version()},
        "asyncddp": _package_version("asyncddp"),
        "torch": torch,
        "nvml": nvml,
        "mpi": _mpi(options),
        "path": path_dirs,
        "on_path": {name: shutil.which(name) for name in ("mpirun", "orted", "prted")},
        "interfaces": _interfaces_ip() or _interfaces_ioctl(),
        "reachability": _reachable(options.get("peers", []), options.get("connect_timeout", 3)),
    }


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(json.dumps(probe(options)))


if __name__ == "__main__":
    main()
