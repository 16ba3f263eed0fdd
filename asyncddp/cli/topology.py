"""``asyncddp topology show|draw|compare``: look at virtual topologies before training on them.

Names come from ``asyncddp.topology.registry`` (the same table the library uses); ``-p KEY=VALUE``
passes constructor parameters (``-p base=4``, ``-p connect_style=left``, ``-p shape=2,8``,
``-p local_size=4``, ``-p seed=3``). The library does the work; this module parses and renders.
"""

from __future__ import annotations

import json

import typer

from asyncddp.errors import ConfigError

PARAM_HELP = "Topology parameter KEY=VALUE (repeatable), e.g. -p base=4, -p local_size=4."


def parse_params(items: list[str] | None) -> dict:
    """``["base=4", "shape=2,8"]`` -> ``{"base": 4, "shape": (2, 8)}`` (int, float, bool, str)."""
    params = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-p/--param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = _value(raw.strip())
    return params


def _value(raw: str):
    if "," in raw:
        return tuple(_value(part.strip()) for part in raw.split(","))
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _fmt_weights(weights: dict) -> str:
    return ", ".join(f"{k}:{v:.4g}" for k, v in weights.items())


def _render_show(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report.name} on {report.n} ranks ({report.kind})")
    table.add_column("rank", justify="right")
    if report.kind == "static":
        for column in ("sends to", "receives from", "self weight", "weights of received"):
            table.add_column(column)
        for row in report.ranks:
            table.add_row(
                str(row["rank"]), " ".join(map(str, row["send_ranks"])), " ".join(map(str, row["recv_ranks"])),
                f"{row['self_weight']:.4g}", _fmt_weights(row["src_weights"]),
            )
    else:
        for k in range(report.steps_measured):
            table.add_column(f"step {k}")
        for row in report.ranks:
            cells = []
            for step in row["steps"]:
                send = ",".join(map(str, step["send_ranks"])) or "-"
                recv = ",".join(map(str, step["recv_ranks"])) or "-"
                cell = f"→{send} ←{recv}"
                if "send_buffer" in step:
                    cell += f" ({step['send_buffer']})"
                cells.append(cell)
            table.add_row(str(row["rank"]), *cells)
    console.print(table)
    if report.kind == "static":
        console.print(f"degrees: {report.degrees}   regular: {report.regular}")
        console.print(f"rho = ||W - 11^T/n||_2 = {report.rho:.4f}   doubly stochastic: {report.doubly_stochastic}")
    else:
        console.print(f"period: {report.period or 'none (random)'}   per step: {report.degrees}")
        console.print(
            f"rho over {report.steps_measured} steps = {report.rho:.4g}   "
            f"per step = {report.rate_per_step:.4g}   doubly stochastic steps: {report.doubly_stochastic}"
        )


def _render_compare(comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"relative consensus error, n={comparison.n}")
    table.add_column("step", justify="right")
    for name in comparison.errors:
        table.add_column(name, justify="right")
    for k in range(comparison.steps + 1):
        table.add_row(str(k), *(f"{errors[k]:.3e}" for errors in comparison.errors.values()))
    console = Console()
    console.print(table)
    for name, step in comparison.steps_to_exact.items():
        console.print(f"{name}: " + (f"exact after {step} steps" if step is not None else "not exact"))


def register(app: typer.Typer) -> None:
    topology_app = typer.Typer(help="Show, draw and compare virtual topologies.", no_args_is_help=True)
    app.add_typer(topology_app, name="topology")

    @topology_app.command("show")
    def show_command(
        name: str = typer.Argument(..., help="Topology name, e.g. exp2, ring, one-peer-exp2, ceca."),
        num_ranks: int = typer.Option(..., "-n", "--num-ranks", help="Number of ranks."),
        steps: int = typer.Option(
            None, "--steps", help="Steps shown for a dynamic schedule (default: one period)."
        ),
        param: list[str] = typer.Option(None, "-p", "--param", help=PARAM_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Neighbours, weights, consensus rate and stochasticity of a topology."""
        from asyncddp.topology.reports import describe_topology

        report = describe_topology(name, num_ranks, steps, **parse_params(param))
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            _render_show(report)

    @topology_app.command("draw")
    def draw_command(
        name: str = typer.Argument(..., help="Topology name."),
        num_ranks: int = typer.Option(..., "-n", "--num-ranks", help="Number of ranks."),
        output: str = typer.Option(..., "-o", "--output", help="PNG file to write."),
        step: int = typer.Option(None, "--step", help="Dynamic schedules: draw only this step."),
        param: list[str] = typer.Option(None, "-p", "--param", help=PARAM_HELP),
    ) -> None:
        """Circular drawing (edge width = weight); dynamic: union of one period, colour per step."""
        from asyncddp.topology.drawing import draw_topology

        typer.echo(f"wrote {draw_topology(name, num_ranks, output, step, **parse_params(param))}")

    @topology_app.command("compare")
    def compare_command(
        names: list[str] = typer.Argument(..., help="Topology names to compare."),
        num_ranks: int = typer.Option(..., "-n", "--num-ranks", help="Number of ranks."),
        steps: int = typer.Option(20, "--steps", help="Steps to simulate."),
        output: str = typer.Option(None, "-o", "--output", help="Also write a log-scale PNG plot here."),
        param: list[str] = typer.Option(
            None, "-p", "--param", help=PARAM_HELP + " Given to every topology taking it."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Consensus error per step (start: identity, i.e. the whole product matrix)."""
        from asyncddp.topology.reports import compare_topologies

        comparison = compare_topologies(names, num_ranks, steps, **parse_params(param))
        if output:
            from asyncddp.topology.drawing import plot_comparison

            plot_comparison(comparison, output)
        if as_json:
            typer.echo(json.dumps(comparison.to_dict(), indent=2))
        else:
            _render_compare(comparison)
            if output:
                typer.echo(f"wrote {output}")
