"""The `fusion-prime audit [PATH]` command."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fusion_prime.ops.audit.model import Severity


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    sarif = "sarif"


def audit(
    path: Annotated[
        Path, typer.Argument(help="repository to audit", exists=True, file_okay=False)
    ] = Path("."),
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="table, json or sarif")
    ] = OutputFormat.table,
    fail_on: Annotated[
        str, typer.Option(help="exit 1 when a finding at or above: low, medium, high, critical")
    ] = "low",
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="path or glob (relative to PATH) to skip; repeatable"),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write the report to this file")
    ] = None,
) -> None:
    """Static audit of deploy files and code: missing DATABASE_URL/secret/Cloud SQL, database
    fallbacks, plaintext credentials, shared databases, public services without auth,
    subscriptions without dead letters."""
    try:
        threshold = Severity.parse(fail_on)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fail-on") from None
    from rich.console import Console

    from fusion_prime.ops.audit.engine import run_audit
    from fusion_prime.ops.audit.report import print_table, to_json, to_sarif

    result = run_audit(path, exclude=exclude or ())
    if output_format is OutputFormat.table:
        if output:
            with output.open("w", encoding="utf-8") as fh:
                print_table(result, Console(file=fh, width=160))
        else:
            print_table(result, Console(file=sys.stdout))
    else:
        text = to_json(result) if output_format is OutputFormat.json else to_sarif(result)
        if output:
            output.write_text(text + "\n", encoding="utf-8")
        else:
            typer.echo(text)
    if result.at_or_above(threshold):
        raise typer.Exit(1)
