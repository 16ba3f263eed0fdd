"""``asyncddp bench converge``: time to accuracy per method (registered on ``bench`` by ``asyncddp.cli.bench``).

Parses the flags into a ``ConvergeOptions`` (every value checked before any rank starts), runs
``run_converge_bench`` under a progress bar and renders the result (rich table, ``--json``,
``--plot``). Exits non-zero, after printing the result, when any method's run failed.
"""

from __future__ import annotations

import math

import typer

from asyncddp.cli import launch_flags as flags
from asyncddp.cli.bench_common import _check_plot_path, _progress_bar, _report, bench_app
from asyncddp.errors import ConfigError


def _options(task, split, num_ranks, steps, eval_every, batch_size, lr, width, target_accuracy, seed, device,
             sync_every):
    from asyncddp.bench.converge import ConvergeOptions, check_target, parse_split, parse_task

    if num_ranks < 1:
        raise ConfigError(f"-np {num_ranks}: give at least 1 rank")
    if steps < 1 or eval_every < 1 or batch_size < 1 or width < 1 or sync_every < 1:
        raise ConfigError(f"--steps {steps} --eval-every {eval_every} --batch-size {batch_size} --width {width} "
                          f"--sync-every {sync_every}: each must be at least 1")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr {lr:g}: give a positive learning rate")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: choose cpu or cuda")
    return ConvergeOptions(task=parse_task(task), split=parse_split(split), num_ranks=num_ranks, steps=steps,
                           eval_every=eval_every, batch_size=batch_size, lr=lr, width=width,
                           target_accuracy=check_target(target_accuracy), seed=seed, device=device,
                           sync_every=sync_every)


@bench_app.command("converge")
@flags.with_launch_flags
def converge_command(
    num_ranks: int = typer.Option(None, "-np", "--np", "-n", help="Number of ranks (default 4, or every slot of "
                                  "the --emulate cluster)."),
    task: str = typer.Option("digits", "--task", help="digits (scikit-learn's 8x8 digits), synthetic (known Bayes "
                             "accuracy 0.9) or module:function returning (model, train_dataset, test_dataset)."),
    split: str = typer.Option("iid", "--split", help="How the training set is dealt to ranks: iid, "
                              "dirichlet:ALPHA (label skew; 0.1 is strong) or by-label."),
    methods: list[str] = typer.Option(None, "--methods", help="Subset, comma-separated or repeated (default: every "
                                      "method of bench MODEL)."),
    steps: int = typer.Option(300, "--steps", help="Training steps per rank."),
    eval_every: int = typer.Option(10, "--eval-every", help="Evaluate on the held-out set every this many steps."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples per rank per step."),
    lr: float = typer.Option(None, "--lr", help="SGD learning rate (momentum 0.9; default: the task's, 0.05)."),
    width: int = typer.Option(128, "--width", help="Hidden width of the built-in tasks' two-layer MLP (a larger "
                              "model makes the network matter)."),
    target_accuracy: float = typer.Option(None, "--target-accuracy", help="Held-out accuracy to reach (default: "
                                          "digits 0.9, synthetic 0.8, a user task's own or 0.9)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data split, the batches and the initial weights."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    sync_every: int = typer.Option(32, "--sync-every", help="Local steps per outer step of local-sgd, "
                                   "diloco-gossip and diloco-allreduce."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    plot: str = typer.Option(None, "--plot", help="Write accuracy against training time and against bytes sent "
                             "per method to this PNG."),
    launch=None,
) -> None:
    """Time to a held-out accuracy per method: which method trains this task to target first, on this network."""
    from asyncddp.bench.converge_render import converge_plot, converge_table
    from asyncddp.bench.converge_run import run_converge_bench
    from asyncddp.bench.results import parse_methods

    if num_ranks is None:
        from asyncddp.bench.network import default_num_ranks

        num_ranks = default_num_ranks(launch, 4)
    base = _options(task, split, num_ranks, steps, eval_every, batch_size, lr, width, target_accuracy, seed, device,
                    sync_every)
    chosen = parse_methods(methods)
    _check_plot_path(plot)
    evaluations = len(chosen) * -(-base.steps // base.eval_every)
    with _progress_bar(f"bench converge {base.task}", evaluations, as_json) as update:
        def on_progress(event):
            update(event["done"], f"bench converge: {event['method']} step {event['step']}/{event['steps']}")

        result = run_converge_bench(base, chosen, launch, on_progress)
    _report(result, as_json, converge_table, plot, converge_plot, what="bench converge")
