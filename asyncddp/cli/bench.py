"""``asyncddp bench``: benchmark sub-commands ``comm``, one per model (``resnet50``, ...), ``straggler``.

Each sub-command parses its flags into an options dataclass, calls one runner function in
``asyncddp.bench`` (which launches the ranks through ``asyncddp run``'s code path), and renders the
result (rich table, ``--plain`` nccl-tests text, ``--json``, ``--plot``). Add a benchmark with a
function decorated ``@bench_app.command("name")`` whose launch flags are those of
``asyncddp.cli.launch_flags``, declared once for every command that starts ranks, and end it with
``_report(result, ..., what="bench name")``: its result type has ``num_runs`` and ``failures()``,
and ``asyncddp.bench.outcome`` turns any failed run into the JSON verdict and a non-zero exit.
"""

from __future__ import annotations

import json
import math
import sys

import typer

from asyncddp.cli import launch_flags as flags
from asyncddp.cli.bench_common import _check_plot_path, _progress_bar, _report, bench_app
from asyncddp.errors import ConfigError


def _refuse_what_cannot_fit(check, num_ranks: int, launch) -> None:
    """``check(ranks_here, available)`` (``asyncddp.bench.memory``) for this machine's memory: with
    every rank here first, and when that does not fit, with the ranks the launch really puts here."""
    from asyncddp.bench.memory import available_bytes

    available = available_bytes()
    try:
        check(num_ranks, available)
    except ConfigError:
        from asyncddp.bench.runner import ranks_on_this_machine

        check(ranks_on_this_machine(num_ranks, launch), available)


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
    from asyncddp.bench.runner import run_comm_bench

    total = len(options.ops) * len(options.sizes)
    with _progress_bar(f"bench comm on {options.num_ranks} ranks: starting", total, quiet) as update:
        return run_comm_bench(options, launch, lambda event: update(event["done"], f"{event['op']} {event['size']} B"))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("comm")
@flags.with_launch_flags
def comm_command(
    num_ranks: int = typer.Option(None, "-np", "--np", "-n", help="Number of ranks (at least 2; default 2, or "
                                  "every slot of the --emulate cluster)."),
    min_bytes: str = typer.Option("1K", "--min-bytes", "-b", help="Smallest size (K/M/G suffixes)."),
    max_bytes: str = typer.Option("64M", "--max-bytes", "-e", help="Largest size (K/M/G suffixes)."),
    step_factor: int = typer.Option(4, "--step-factor", "-f", help="Multiply the size by this each step."),
    iters: int = typer.Option(20, "--iters", help="Timed iterations per size."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed iterations before timing."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    ops: list[str] = typer.Option(None, "--ops", help="Subset of ops, comma-separated or repeated "
                                  "(neighbor_allreduce, neighbor_allreduce_one_peer, hierarchical_neighbor_allreduce, "
                                  "allreduce, allgather, broadcast, win_put)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (tensors on the GPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    plain: bool = typer.Option(False, "--plain", help="Print nccl-tests-style plain text instead of a rich table."),
    min_busbw: float = typer.Option(None, "--min-busbw", help="Exit 1 when the average busbw (GB/s) is below this."),
    plot: str = typer.Option(None, "--plot", help="Write busbw-vs-size per op to this PNG."),
    launch=None,
) -> None:
    """Time neighbour averaging, collectives and window puts against raw mpi4py, nccl-tests style."""
    if min_busbw is not None and not (math.isfinite(min_busbw) and min_busbw > 0):
        raise ConfigError(f"--min-busbw {min_busbw:g}: give a positive bandwidth in GB/s")
    if num_ranks is None:
        from asyncddp.bench.network import default_num_ranks

        num_ranks = default_num_ranks(launch, 2)
    options = _comm_options(num_ranks, min_bytes, max_bytes, step_factor, iters, warmup, dtype, ops, device,
                            progress=True)
    _check_plot_path(plot)
    if device == "cpu":
        from asyncddp.bench.memory import check_comm_memory
        from asyncddp.bench.results import ITEMSIZE

        _refuse_what_cannot_fit(lambda ranks_here, available: check_comm_memory(
            options.ops, max(options.sizes), num_ranks, ITEMSIZE[dtype], ranks_here, available, max_bytes),
            num_ranks, launch)
    result = _run_with_progress(options, launch, quiet=as_json)
    from asyncddp.bench import outcome, render

    missed = None
    if min_busbw is not None and result.avg_busbw_gbs < min_busbw:
        missed = f"average busbw {result.avg_busbw_gbs:.4f} GB/s is below --min-busbw {min_busbw:g}"
    if as_json:
        typer.echo(json.dumps(outcome.document(result, missed), indent=2))
    elif plain:
        typer.echo(render.comm_text(result))
    else:
        from rich.console import Console

        # Piped output has no terminal width: give the table room instead of rich's 80 columns.
        Console(width=None if sys.stdout.isatty() else 120).print(render.comm_table(result))
    if plot:
        render.comm_plot(result, plot)
        print(f"plot written to {plot}", file=sys.stderr)
    outcome.check(result, "bench comm", missed)  # wrong values (the #wrong column), then the bound


def _model_command(model: str):
    @flags.with_launch_flags
    def command(
        num_ranks: str = typer.Option(None, "-np", "--np", "-n", help="Rank counts, comma-separated, e.g. 1,2,4 "
                                      "(default 1,2, or every slot of the --emulate cluster)."),
        methods: list[str] = typer.Option(None, "--methods", help="Subset, comma-separated or repeated (local, ddp, "
                                          "allreduce, dear, neighbor-exp2, neighbor-one-peer, hierarchical, win-put, "
                                          "choco-topk, choco-int8, local-sgd, diloco-gossip, diloco-allreduce)."),
        sync_every: int = typer.Option(32, "--sync-every", help="Local steps per outer step of local-sgd, "
                                       "diloco-gossip and diloco-allreduce."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per rank per step."),
        image_size: int = typer.Option(224, "--image-size", help="Synthetic image side in pixels (at least 32)."),
        warmup: int = typer.Option(2, "--warmup", help="Untimed steps before timing."),
        iters: int = typer.Option(10, "--iters", help="Timed steps per run."),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        plot: str = typer.Option(None, "--plot", help="Write throughput and efficiency vs np per method to this PNG "
                                 "(with --sweep-bandwidth: img/s and step time vs link rate)."),
        sweep_bandwidth: str = typer.Option(None, "--sweep-bandwidth", help="Link rates of the --emulate cluster, "
                                            "e.g. 200mbit,1gbit,10gbit: every method once per rate, at one np."),
        kill_rank: int = typer.Option(None, "--kill-rank", help="Lose this rank (SIGKILL) mid-run: each method runs "
                                      "fault tolerant, and the survivors' img/s before and after, recovery stall "
                                      "and parameter disagreement are reported (default np: 4)."),
        kill_at_step: int = typer.Option(None, "--kill-at-step", help="With --kill-rank: the rank dies instead of "
                                         "running this step (from 0, warm-up included; default: half-way through "
                                         "the timed steps)."),
        min_ranks: int = typer.Option(None, "--min-ranks", help="With --kill-rank: a job with fewer ranks finishing "
                                      "fails (as asyncddp run --min-ranks)."),
        launch=None,
    ) -> None:
        from asyncddp.bench import render
        from asyncddp.bench.results import ModelBenchOptions, parse_methods, parse_num_ranks

        if kill_rank is None and (kill_at_step is not None or min_ranks is not None):
            flag = "--kill-at-step" if kill_at_step is not None else "--min-ranks"
            raise ConfigError(f"{flag} {kill_at_step if kill_at_step is not None else min_ranks}: only with "
                              "--kill-rank R (the rank to lose)")
        if kill_rank is not None and sweep_bandwidth is not None:
            raise ConfigError("--kill-rank with --sweep-bandwidth: give one of them")
        if num_ranks is None:
            from asyncddp.bench.network import default_num_ranks

            num_ranks = str(default_num_ranks(launch, "1,2" if kill_rank is None else 4))
        rank_counts, chosen = parse_num_ranks(num_ranks), parse_methods(methods)
        if sync_every < 1:
            raise ConfigError(f"--sync-every {sync_every}: give at least 1 local step per outer step")
        if batch_size < 1 or image_size < 32 or iters < 1 or warmup < 0:
            raise ConfigError(f"--batch-size {batch_size} --image-size {image_size} --iters {iters} --warmup "
                              f"{warmup}: need batch >= 1, image size >= 32, iters >= 1, warmup >= 0")
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {device}: choose cpu or cuda")
        _check_plot_path(plot)
        _refuse_big_batch(batch_size, image_size, max(rank_counts), launch)
        if kill_rank is not None:
            return _fault(model, rank_counts, bool(methods), chosen, kill_rank, kill_at_step, min_ranks,
                          dict(batch_size=batch_size, image_size=image_size, warmup=warmup, iters=iters,
                               device=device, sync_every=sync_every), launch, as_json, plot)
        base = ModelBenchOptions(model=model, batch_size=batch_size, image_size=image_size, warmup=warmup,
                                 iters=iters, device=device, sync_every=sync_every)
        if sweep_bandwidth is not None:
            return _sweep(base, chosen, rank_counts, sweep_bandwidth, launch, as_json, plot)
        result = _run_models_with_progress(base, chosen, rank_counts, launch, quiet=as_json)
        _report(result, as_json, render.model_table, plot, render.model_plot, what=f"bench {model}")

    command.__doc__ = (f"Training throughput of {model} on synthetic ImageNet-shaped data, every method side by "
                       "side, one launch per (method, np).")
    return command


def _refuse_big_batch(batch_size: int, image_size: int, num_ranks: int, launch) -> None:
    from asyncddp.bench.memory import check_batch_memory

    _refuse_what_cannot_fit(lambda ranks_here, available: check_batch_memory(batch_size, image_size, ranks_here,
                                                                             available), num_ranks, launch)


def _sweep(base, methods, rank_counts, rates_text, launch, as_json: bool, plot: str | None) -> None:
    from asyncddp.bench import render
    from asyncddp.bench.sweep import FLAG, parse_bandwidths, require_emulated, run_bandwidth_sweep

    require_emulated(launch)
    rates = parse_bandwidths(rates_text)
    if len(rank_counts) != 1:
        raise ConfigError(f"--np {','.join(map(str, rank_counts))} with --sweep-bandwidth: a sweep runs at one "
                          "rank count; give one (default: every slot of the --emulate cluster)")
    with _progress_bar(f"bench {base.model} sweep", len(methods) * len(rates), as_json) as update:
        sweep = run_bandwidth_sweep(base, methods, rank_counts[0], rates, launch, lambda event: update(
            event["done"], f"bench {base.model}: {event['method']} at {event['bandwidth']}"))
    _report(sweep, as_json, render.sweep_table, plot, render.sweep_plot, what=f"bench {base.model} {FLAG}")


def _fault(model, rank_counts, methods_given, chosen, kill_rank, kill_at_step, min_ranks, settings, launch,
           as_json: bool, plot: str | None) -> None:
    """The --kill-rank bench: every chosen method that can survive, as a fault-tolerant job losing one rank."""
    from dataclasses import replace

    from asyncddp.bench import render
    from asyncddp.bench.fault import FaultBenchOptions, check_kill, choose_fault_methods, default_kill_step
    from asyncddp.bench.runner import fault_launch, run_fault_bench

    if len(rank_counts) != 1:
        raise ConfigError(f"--np {','.join(map(str, rank_counts))} with --kill-rank: the bench loses a rank of one "
                          "job size; give one")
    if kill_at_step is None:
        kill_at_step = default_kill_step(settings["warmup"], settings["iters"])
    check_kill(rank_counts[0], kill_rank, kill_at_step, settings["warmup"], settings["iters"], min_ranks)
    methods, left_out = choose_fault_methods(methods_given, chosen)
    base = FaultBenchOptions(model=model, num_ranks=rank_counts[0], kill_rank=kill_rank, kill_at_step=kill_at_step,
                             **settings)
    launch = replace(launch, min_ranks=min_ranks)
    fault_launch(base, launch)  # a refusal is one line, before the progress bar
    with _progress_bar(f"bench {model} --kill-rank {kill_rank}", len(methods), as_json) as update:
        result = run_fault_bench(base, methods, left_out, launch, lambda event: update(
            event["done"], f"bench {model}: {event['method']} -np {event['num_ranks']}, losing rank {kill_rank}"))
    _report(result, as_json, render.fault_table, plot, render.fault_plot,
            what=f"bench {model} --kill-rank {kill_rank}")


def _run_models_with_progress(base, methods, rank_counts, launch, quiet: bool):
    from asyncddp.bench.runner import run_model_bench

    with _progress_bar(f"bench {base.model}", len(methods) * len(rank_counts), quiet) as update:
        return run_model_bench(base, methods, rank_counts, launch, lambda event: update(
            event["done"], f"bench {base.model}: {event['method']} -np {event['num_ranks']}"))


for _model in ("resnet18", "resnet50", "vgg16", "mobilenet_v3", "transformer", "mlp"):
    bench_app.command(_model)(_model_command(_model))


@bench_app.command("straggler")
@flags.with_launch_flags
def straggler_command(
    num_ranks: int = typer.Option(None, "-np", "--np", "-n", help="Number of ranks (at least 2; default 4, or "
                                  "every slot of the --emulate cluster)."),
    slow_rank: int = typer.Option(1, "--slow-rank", help="The rank made slower."),
    slow_factor: float = typer.Option(2.0, "--slow-factor", help="How many times slower (sleeps (f-1) x compute)."),
    model: str = typer.Option("mlp", "--model", help="Model trained (as for bench MODEL)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per rank per step."),
    image_size: int = typer.Option(32, "--image-size", help="Synthetic image side in pixels."),
    iters: int = typer.Option(30, "--iters", help="Timed steps per rank and phase."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed steps before timing."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    launch=None,
) -> None:
    """One slow rank: fast ranks' throughput with synchronous neighbour averaging vs asynchronous win-put."""
    from asyncddp.bench import render
    from asyncddp.bench.results import MODELS, StragglerOptions
    from asyncddp.bench.runner import run_straggler_bench

    if num_ranks is None:
        from asyncddp.bench.network import default_num_ranks

        num_ranks = default_num_ranks(launch, 4)
    if num_ranks < 2 or not 0 <= slow_rank < num_ranks:
        raise ConfigError(f"-np {num_ranks} --slow-rank {slow_rank}: need at least 2 ranks and 0 <= slow rank < np")
    if not (math.isfinite(slow_factor) and slow_factor >= 1):
        raise ConfigError(f"--slow-factor {slow_factor:g}: give a finite factor of at least 1")
    if model not in MODELS:
        raise ConfigError(f"--model {model}: choose {', '.join(MODELS[:-1])} or {MODELS[-1]}")
    if batch_size < 1 or image_size < 32 or iters < 1 or warmup < 0:
        raise ConfigError(f"--batch-size {batch_size} --image-size {image_size} --iters {iters} --warmup {warmup}: "
                          "need batch >= 1, image size >= 32, iters >= 1, warmup >= 0")
    _refuse_big_batch(batch_size, image_size, num_ranks, launch)
    options = StragglerOptions(num_ranks=num_ranks, slow_rank=slow_rank, slow_factor=slow_factor, model=model,
                               batch_size=batch_size, image_size=image_size, iters=iters, warmup=warmup)
    result = run_straggler_bench(options, launch)
    _report(result, as_json, render.straggler_table, what="bench straggler")


from asyncddp.cli import bench_converge  # noqa: E402,F401  (registers ``bench converge`` on bench_app)
