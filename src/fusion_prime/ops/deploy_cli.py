"""`fusion-prime deploy ...`: keep the generated deploy files in step with the registries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Generate and check the deploy files.")

DEFAULT_DIR = Path("deploy")


@app.command()
def generate(
    deploy_dir: Annotated[Path, typer.Option("--dir", help="the deploy directory")] = DEFAULT_DIR,
    service: Annotated[
        list[str] | None,
        typer.Option(help="generate for these services instead of the shipped ones; repeatable"),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="write nothing; exit 1 when a file is out of date")
    ] = False,
) -> None:
    """Write deploy/cloudbuild/<service>.yaml and deploy/terraform/generated.auto.tfvars.json."""
    from fusion_prime.ops.deploy_gen import (
        known_services,
        shipped_services,
        stale_files,
        write_files,
    )

    try:
        services = known_services(service) if service else shipped_services()
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint="--service") from None
    if check:
        stale = stale_files(deploy_dir, services)
        for rel in stale:
            typer.echo(f"out of date: {deploy_dir / rel}", err=True)
        if stale:
            typer.echo("run `fusion-prime deploy generate` and commit the result", err=True)
            raise typer.Exit(1)
        typer.echo(f"deploy files up to date ({len(services)} services)")
        return
    for rel in write_files(deploy_dir, services):
        typer.echo(f"wrote {deploy_dir / rel}")
    typer.echo(f"{len(services)} services: {', '.join(s.name for s in services) or 'none'}")
