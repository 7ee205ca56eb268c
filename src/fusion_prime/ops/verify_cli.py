"""The `fusion-prime verify` command (heavy imports deferred to the call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def verify(
    urls: Annotated[
        list[str] | None, typer.Argument(help="service base URLs (or their /health/ready URLs)")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="file listing services: `URL` or `NAME URL` per line"),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="the shipped services on their default local ports")
    ] = False,
    expect_production: Annotated[
        bool, typer.Option("--expect-production", help="fail on the local embedded PostgreSQL")
    ] = False,
    max_heartbeat_age: Annotated[
        float, typer.Option(help="seconds a heartbeat may be old before it counts as stale")
    ] = 120.0,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 10.0,
    token_file: Annotated[
        Path | None,
        typer.Option(help="file holding a bearer token (Cloud Run identity token) to send"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Check that running services answer /health/ready on PostgreSQL at the migration head
    with a fresh heartbeat; exit 1 when any does not."""
    from rich.console import Console
    from rich.table import Table

    from fusion_prime.ops.verify import (
        check,
        endpoint,
        local_endpoints,
        read_targets_file,
        summary_rows,
    )

    endpoints = [endpoint(u) for u in urls or []]
    try:
        if file is not None:
            endpoints.extend(read_targets_file(file))
    except (OSError, ValueError) as exc:
        typer.echo(f"verify: {exc}", err=True)
        raise typer.Exit(2) from None
    if local:
        endpoints.extend(local_endpoints())
    if not endpoints:
        typer.echo("verify: no service to check (give URLs, --file or --local)", err=True)
        raise typer.Exit(2)
    try:
        token = token_file.read_text(encoding="utf-8").strip() if token_file else None
    except OSError as exc:
        typer.echo(f"verify: cannot read the token file: {exc}", err=True)
        raise typer.Exit(2) from None
    verdicts = check(
        endpoints,
        expect_production=expect_production,
        max_heartbeat_age=max_heartbeat_age,
        timeout=timeout,
        token=token,
    )
    if as_json:
        typer.echo(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        table = Table(title="fusion-prime verify")
        for col in ("service", "url", "http", "dialect", "revision", "embedded", "heartbeat"):
            table.add_column(col, overflow="fold")
        table.add_column("verdict", overflow="fold")
        for row in summary_rows(verdicts):
            style = "green" if row[-1] == "OK" else "red"
            table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]")
        Console().print(table)
    if not all(v.ok for v in verdicts):
        raise typer.Exit(1)
