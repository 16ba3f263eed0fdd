"""``asyncddp version``: print the version of asyncddp and the libraries it runs on."""

from __future__ import annotations

import json
from importlib import metadata

import typer

PACKAGES = ("asyncddp", "torch", "mpi4py", "numpy", "networkx", "typer", "rich", "paramiko", "pyyaml")


def installed_versions() -> dict[str, str | None]:
    """Installed version of each package asyncddp depends on (None when missing)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def register(app: typer.Typer) -> None:
    @app.command("version")
    def version_command(
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Print the versions of asyncddp and its dependencies."""
        versions = installed_versions()
        if as_json:
            typer.echo(json.dumps(versions, indent=2))
            return
        for name, value in versions.items():
            typer.echo(f"{name:10} {value or 'not installed'}")
