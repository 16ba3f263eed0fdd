"""``asyncddp bench``: benchmark sub-commands; ``comm`` today, model benchmarks to come.

Each sub-command parses its flags into an options dataclass, calls one runner function in
``asyncddp.bench`` (which launches the ranks through ``asyncddp run``'s code path), and renders the
result (rich table, ``--plain`` nccl-tests text, ``--json``, ``--plot``). Add a benchmark with a
function decorated ``@bench_app.command("name")`` that reuses ``_launch_options``.
"""

from __future__ import annotations

import json
import os
import sys

import typer

from asyncddp.errors import ConfigError

bench_app = typer.Typer(help="Benchmarks: communication ops in nccl-tests form (comm).",
                        no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def _launch_options(hostfile, hosts, config, env, mpi_args, oversubscribe, timeout):
    from asyncddp.bench.runner import LaunchOptions

    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout {timeout}: give a positive number of seconds")
    return LaunchOptions(hostfile=hostfile, host_list=hosts, config=config, env=tuple(env or ()),
                         mpi_args=mpi_args, oversubscribe=oversubscribe, timeout=timeout)


def _check_plot_path(path: str | None) -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not path.lower().endswith(".png"):
        raise ConfigError(f"--plot {path}: give a .png file name")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ConfigError(f"--plot {path}: directory {parent} does not exist or is not writable")


def _comm_options(num_ranks, min_bytes, max_bytes, step_factor, iters, warmup, dtype, ops, device, progress):
    from asyncddp.bench.results import DTYPES, CommBenchOptions, parse_ops, parse_size, size_steps

    if num_ranks < 2:
        raise ConfigError(f"-np {num_ranks}: bench comm needs at least 2 ranks")
    if iters < 1 or warmup < 0:
        raise ConfigError(f"--iters {iters} --warmup {warmup}: need iters >= 1 and warmup >= 0")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: choose cpu or cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is "
                              "False); use --device cpu")
    sizes = size_steps(parse_size(min_bytes, "--min-bytes"), parse_size(max_bytes, "--max-bytes"), step_factor)
    return CommBenchOptions(num_ranks=num_ranks, sizes=sizes, iters=iters, warmup=warmup, dtype=dtype,
                            ops=parse_ops(ops), device=device, progress=progress)


def _run_with_progress(options, launch, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from asyncddp.bench.runner import run_comm_bench

    console = Console(stderr=True)
    total = len(options.ops) * len(options.sizes)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task(f"bench comm on {options.num_ranks} ranks: starting", total=total)

        def on_progress(event: dict) -> None:
            progress.update(task, completed=event["done"], description=f"{event['op']} {event['size']} B")

        return run_comm_bench(options, launch, on_progress)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("comm")
def comm_command(
    num_ranks: int = typer.Option(2, "-np", "--np", "-n", help="Number of ranks (at least 2)."),
    hostfile: str = typer.Option(None, "--hostfile", help="Open MPI hostfile, as for asyncddp run."),
    hosts: str = typer.Option(None, "-H", "--host", help="Hosts, e.g. a:4,b:4."),
    config: str = typer.Option(None, "--config", help="YAML cluster config, as for asyncddp run."),
    env: list[str] = typer.Option(None, "-x", help="Forward NAME or set NAME=value on the ranks; repeatable."),
    mpi_args: str = typer.Option(None, "--mpi-args", help="Extra mpirun arguments, one quoted string."),
    oversubscribe: bool = typer.Option(False, "--oversubscribe", help="Allow more ranks than slots."),
    timeout: float = typer.Option(None, "--timeout", help="Kill the benchmark after this many seconds."),
    min_bytes: str = typer.Option("1K", "--min-bytes", "-b", help="Smallest size (K/M/G suffixes)."),
    max_bytes: str = typer.Option("64M", "--max-bytes", "-e", help="Largest size (K/M/G suffixes)."),
    step_factor: int = typer.Option(4, "--step-factor", "-f", help="Multiply the size by this each step."),
    iters: int = typer.Option(20, "--iters", help="Timed iterations per size."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed iterations before timing."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    ops: list[str] = typer.Option(None, "--ops", help="Subset of ops, comma-separated or repeated "
                                  "(neighbor_allreduce, neighbor_allreduce_one_peer, allreduce, allgather, broadcast, win_put)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (tensors on the GPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    plain: bool = typer.Option(False, "--plain", help="Print nccl-tests-style plain text instead of a rich table."),
    min_busbw: float = typer.Option(None, "--min-busbw", help="Exit 1 when the average busbw (GB/s) is below this."),
    plot: str = typer.Option(None, "--plot", help="Write busbw-vs-size per op to this PNG."),
) -> None:
    """Time neighbour averaging, collectives and window puts against raw mpi4py, nccl-tests style."""
    from asyncddp.bench.results import BandwidthBelowBound

    options = _comm_options(num_ranks, min_bytes, max_bytes, step_factor, iters, warmup, dtype, ops, device,
                            progress=True)
    launch = _launch_options(hostfile, hosts, config, env, mpi_args, oversubscribe, timeout)
    _check_plot_path(plot)
    result = _run_with_progress(options, launch, quiet=as_json)
    from asyncddp.bench import render

    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    elif plain:
        typer.echo(render.comm_text(result))
    else:
        from rich.console import Console

        # Piped output has no terminal width: give the table room instead of rich's 80 columns.
        Console(width=None if sys.stdout.isatty() else 120).print(render.comm_table(result))
    if plot:
        render.comm_plot(result, plot)
        print(f"plot written to {plot}", file=sys.stderr)
    if result.num_wrong:
        from asyncddp.bench.results import BenchError

        raise BenchError(f"bench comm: {result.num_wrong} wrong result values (see the #wrong column)")
    if min_busbw is not None and result.avg_busbw_gbs < min_busbw:
        raise BandwidthBelowBound(f"bench comm: average busbw {result.avg_busbw_gbs:.4f} GB/s is below "
                                  f"--min-busbw {min_busbw:g}")
