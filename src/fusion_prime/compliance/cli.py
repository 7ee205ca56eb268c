"""`fusion-prime compliance ...`: sanctions list loading, audit verification, AML rules."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fusion_prime.compliance import repository, service
from fusion_prime.compliance.domain import AmlRules
from fusion_prime.compliance.sanctions.loader import (
    LoadResult,
    default_list_name,
    load_parsed,
    record_count,
)
from fusion_prime.compliance.sanctions.parsers import (
    FORMATS,
    ListFormatError,
    guess_format,
    parse,
)
from fusion_prime.compliance.settings import SanctionsSettings
from fusion_prime.platform import auth
from fusion_prime.platform.database import (
    DatabaseConfigError,
    engine_scope,
    normalise_database_url,
)
from fusion_prime.platform.settings import BaseServiceSettings

app = typer.Typer(no_args_is_help=True, help="Compliance administration.")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
T = TypeVar("T")


def _database_url() -> URL:
    try:
        return normalise_database_url(
            BaseServiceSettings().database_url, service="compliance", db_slug="compliance"
        )
    except DatabaseConfigError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None


def _on_database(
    url: URL, work: Callable[[AsyncConnection], Awaitable[T]], *, write: bool = False
) -> T:
    """Run `work` on one connection (in one transaction when it writes), then dispose."""

    async def _run() -> T:
        async with engine_scope(url, pool_size=1, app_name="compliance-cli") as engine:
            async with engine.begin() if write else engine.connect() as conn:
                return await work(conn)

    return asyncio.run(_run())


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def _decode(raw: bytes) -> str:
    # OFAC's CSVs are mostly ASCII but have shipped Windows-1252 accents
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


@app.command("load-sanctions")
def load_sanctions(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help=f"one of {', '.join(FORMATS)} (default: from the name)"),
    ] = None,
    list_name: Annotated[
        str | None, typer.Option("--list", help="list name (default OFAC-SDN / OpenSanctions)")
    ] = None,
    version_date: Annotated[
        str | None,
        typer.Option(help="publication date YYYY-MM-DD (default: FtM last_change or file date)"),
    ] = None,
) -> None:
    """Load an OFAC sdn/alt/add CSV or FollowTheMoney JSON lines; all of it or nothing."""
    chosen = fmt or guess_format(file.name)
    if chosen not in FORMATS:
        err.print(
            f"{file}: unknown list format {chosen or '(not recognised from the file name)'}; "
            f"use --format with one of {', '.join(FORMATS)}; nothing was loaded",
            markup=False,
        )
        raise typer.Exit(2)
    day: date | None = None
    if version_date is not None:
        try:
            day = date.fromisoformat(version_date)
        except ValueError:
            err.print(f"--version-date {version_date!r} is not YYYY-MM-DD", markup=False)
            raise typer.Exit(2) from None
    raw = file.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    # newline="" splits on \r, \n and \r\n only (not on the Unicode separators splitlines uses)
    lines = list(io.StringIO(_decode(raw), newline=""))
    url = _database_url()
    name = list_name or default_list_name(chosen)
    with _progress() as progress:
        parse_task = progress.add_task(f"parsing {file.name}", total=len(lines))

        def counted() -> Iterator[str]:
            for i, line in enumerate(lines, start=1):
                if i % 500 == 0:
                    progress.update(parse_task, completed=i)
                yield line
            progress.update(parse_task, completed=len(lines))

        try:
            parsed = parse(chosen, counted())
        except ListFormatError as exc:
            progress.stop()
            err.print(f"{file}: {exc}; nothing was loaded", markup=False)
            raise typer.Exit(1) from None
        used_date = (
            day or parsed.latest_change or datetime.fromtimestamp(file.stat().st_mtime, UTC).date()
        )
        write_task = progress.add_task("writing", total=record_count(parsed))
        threshold = SanctionsSettings().sanctions_name_threshold

        async def _load(conn: AsyncConnection) -> tuple[LoadResult, service.RescreenResult]:
            result = await load_parsed(
                conn,
                parsed,
                list_name=name,
                file_name=file.name,
                sha256=sha,
                version_date=used_date,
                progress=lambda n: progress.advance(write_task, n),
            )
            rescreened = service.RescreenResult(0, 0)
            if result.changed:
                # same transaction: the new version and the re-screening commit together
                async with AsyncSession(bind=conn, expire_on_commit=False) as session:
                    rescreened = await service.rescreen_users(
                        session, threshold=threshold, actor=f"list-load:{name}"
                    )
            return result, rescreened

        try:
            result, rescreened = _on_database(url, _load, write=True)
        except ListFormatError as exc:
            progress.stop()
            err.print(f"{file}: {exc}; nothing was loaded", markup=False)
            raise typer.Exit(1) from None
    if result.changed:
        out.print(
            f"loaded {result.records} records from {file.name} ({chosen}) into "
            f"{result.list_name} version {result.version_date} (id {result.version_id})",
            markup=False,
        )
        out.print(
            f"re-screened {rescreened.users} users: {rescreened.hits} "
            f"hit{'s' if rescreened.hits != 1 else ''}",
            markup=False,
        )
    else:
        out.print(
            f"{file.name} is already loaded in {result.list_name} version "
            f"{result.version_date}; nothing changed",
            markup=False,
        )


@app.command("verify-audit")
def verify_audit() -> None:
    """Recompute the audit hash chain; exit 1 naming the first broken row."""
    report = _on_database(_database_url(), repository.verify_audit_chain)
    if report.broken is not None:
        err.print(
            f"audit chain BROKEN at seq {report.broken.seq}: {report.broken.reason}",
            markup=False,
        )
        raise typer.Exit(1)
    out.print(f"audit chain intact: {report.rows} rows, head seq {report.head_seq}", markup=False)


def _parse_assignment(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    if isinstance(parsed, float):
        parsed = value  # thresholds stay exact decimals
    return key.strip(), parsed


@app.command("publish-rules")
def publish_rules(
    assignments: Annotated[
        list[str],
        typer.Option(
            "--set", help="KEY=VALUE changed from the current version, e.g. daily_threshold=5000"
        ),
    ],
    api_key: Annotated[
        str,
        typer.Option(
            envvar="FP_API_KEY",
            help="your API key (role compliance_officer); the version records its identity",
            show_default=False,
        ),
    ],
    note: Annotated[str, typer.Option(help="why the thresholds change")] = "",
) -> None:
    """Publish a new AML rules version: the current one with the given changes.

    Who publishes is the identity of the API key, checked in the compliance database
    (a name given on the command line could be anyone's)."""
    url = _database_url()
    changes = dict(_parse_assignment(a) for a in assignments)

    async def _publish(conn: AsyncConnection) -> AmlRules:
        identity = await auth.verify_token(conn, api_key)
        if not identity.may("compliance_officer"):
            raise auth.ForbiddenError(
                f"publishing rules needs the role 'compliance_officer'; the key "
                f"{identity.key_id} has {identity.role!r}"
            )
        by = identity.actor
        current = await repository.current_rules(conn)
        merged = current.to_json()
        if isinstance(changes.get("weights"), dict):
            changes["weights"] = {**merged["weights"], **changes["weights"]}
        merged.update(changes)
        return await repository.publish_rules(conn, merged, by, note)

    try:
        rules = _on_database(url, _publish, write=True)
    except (auth.AuthenticationError, auth.ForbiddenError) as exc:
        err.print(f"refused: {exc.detail}; nothing was published", markup=False)
        raise typer.Exit(2) from None
    except ValueError as exc:
        err.print(f"rules refused: {exc}; nothing was published", markup=False)
        raise typer.Exit(1) from None
    out.print(f"published AML rules version {rules.version}", markup=False)
    out.print_json(json.dumps(rules.to_json()))


@app.command("show-rules")
def show_rules() -> None:
    """Print the AML rules version in force."""
    rules = _on_database(_database_url(), repository.current_rules)
    out.print(f"AML rules version {rules.version}", markup=False)
    out.print_json(json.dumps(rules.to_json()))
