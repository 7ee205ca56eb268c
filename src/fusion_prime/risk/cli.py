"""`fusion-prime risk ...`: bulk position import and an on-demand sweep."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.ext.asyncio import async_sessionmaker

from fusion_prime.risk.domain import ACCOUNT_ID_RE, ASSET_RE, MAX_DECIMALS, MAX_UNITS, Position

app = typer.Typer(no_args_is_help=True, help="Risk engine administration.")
console = Console(stderr=True)
FIELDS = ("account", "asset", "collateral", "debt", "decimals")
CHUNK = 5000


@dataclass
class Parsed:
    """Accounts in file order with their complete position sets, or the line errors."""

    accounts: dict[str, list[Position]] = field(default_factory=dict)
    lines: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    rows: int = 0


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"{name} must be an integer")
    text = str(value if value not in (None, "") else 0).strip()
    if not text.lstrip("-").isdigit():
        raise ValueError(f"{name} must be an integer, got {text!r}")
    n = int(text)
    if not low <= n <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]")
    return n


def _records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record) pairs; a string record is a parse error message."""
    with path.open(encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            reader = csv.DictReader(fh)
            missing = [f for f in FIELDS if f not in (reader.fieldnames or []) and f != "debt"]
            if missing:
                yield 1, f"header lacks {', '.join(missing)}"
                return
            for row in reader:
                yield reader.line_num, dict(row)
            return
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, f"invalid JSON: {exc.msg}"
                continue
            yield n, obj if isinstance(obj, dict) else "a line must be a JSON object"


def parse(path: Path, fmt: str, progress: Progress | None = None) -> Parsed:
    out = Parsed()
    task = None
    if progress is not None:
        with path.open("rb") as fh:
            total = sum(1 for _ in fh)
        task = progress.add_task("validating", total=total)
    for n, rec in _records(path, fmt):
        out.rows += 1
        if progress is not None and task is not None and out.rows % 2000 == 0:
            progress.update(task, completed=n)
        if isinstance(rec, str):
            out.errors.append(f"line {n}: {rec}")
            continue
        try:
            account = str(rec.get("account", "")).strip()
            asset = str(rec.get("asset", "")).strip()
            if not ACCOUNT_ID_RE.fullmatch(account):
                raise ValueError(f"account: malformed id {account!r}")
            if not ASSET_RE.fullmatch(asset):
                raise ValueError(f"asset: malformed asset {asset!r}")
            pos = Position(
                asset,
                _int(rec.get("collateral"), "collateral", 0, MAX_UNITS),
                _int(rec.get("debt"), "debt", 0, MAX_UNITS),
                _int(rec.get("decimals"), "decimals", 0, MAX_DECIMALS),
            )
        except ValueError as exc:
            out.errors.append(f"line {n}: {exc}")
            continue
        if (account, asset) in out.lines:
            out.errors.append(
                f"line {n}: asset: {asset} already given for {account} "
                f"on line {out.lines[(account, asset)]}"
            )
            continue
        out.lines[(account, asset)] = n
        out.accounts.setdefault(account, []).append(pos)
    if progress is not None and task is not None:
        progress.update(task, completed=progress.tasks[task].total)
    return out


async def _import(path: Path, fmt: str) -> int:
    from fusion_prime.platform.database import engine_scope
    from fusion_prime.platform.runner import StartupRefusedError, load_settings
    from fusion_prime.risk import repository as repo
    from fusion_prime.risk.service import now_utc, reevaluate_accounts
    from fusion_prime.risk.spec import SPEC

    try:
        _, url = load_settings(SPEC)
    except StartupRefusedError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        parsed = parse(path, fmt, progress)
        async with engine_scope(url, pool_size=1, app_name="risk-import") as engine:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                async with session.begin():
                    known = await repo.current_params(session)
                    for (account, asset), n in parsed.lines.items():
                        if asset not in known:
                            parsed.errors.append(f"line {n}: asset: unknown asset {asset}")
                            continue
                        decimals = known[asset].decimals
                        pos = next(p for p in parsed.accounts[account] if p.asset == asset)
                        if decimals != pos.decimals:
                            parsed.errors.append(
                                f"line {n}: decimals: {asset} has {decimals} decimals"
                            )
                    if parsed.errors:
                        await session.rollback()
                        return _report_errors(parsed)
                    await repo.lock_evaluation(session)
                    items = list(parsed.accounts.items())
                    write = progress.add_task("writing", total=len(items))
                    for i in range(0, len(items), CHUNK):
                        await repo.replace_positions(session, items[i : i + CHUNK])
                        progress.advance(write, len(items[i : i + CHUNK]))
                    evaluate = progress.add_task("evaluating", total=len(items))
                    now = now_utc()
                    events = 0
                    for i in range(0, len(items), CHUNK):
                        ids = [a for a, _ in items[i : i + CHUNK]]
                        out = await reevaluate_accounts(session, ids, now, "import")
                        events += len(out.events)
                        progress.advance(evaluate, len(ids))
    console.print(
        f"imported {parsed.rows} rows for {len(parsed.accounts)} accounts; {events} margin events"
    )
    return 0


def _report_errors(parsed: Parsed) -> int:
    shown = sorted(parsed.errors, key=lambda e: int(e.split(":")[0].split()[1]))
    for e in shown[:50]:
        console.print(e, markup=False)
    if len(shown) > 50:
        console.print(f"... and {len(shown) - 50} more", markup=False)
    console.print(f"nothing imported: {len(shown)} invalid rows", markup=False)
    return 1


@app.command("import")
def import_positions(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl or csv (default: from the file extension)")
    ] = "auto",
) -> None:
    """Replace the positions of every account in FILE, all or nothing.

    One row per (account, asset): account, asset, collateral, debt (integer base units)
    and decimals. An account's rows are its complete new position set.
    """
    if fmt == "auto":
        fmt = "csv" if file.suffix.lower() == ".csv" else "jsonl"
    if fmt not in ("csv", "jsonl"):
        raise typer.BadParameter("--format must be jsonl or csv")
    raise typer.Exit(asyncio.run(_import(file, fmt)))


@app.command("sweep")
def run_sweep() -> None:
    """Run one sweep now (stale prices, reminders, periodic snapshots)."""
    from fusion_prime.platform.database import engine_scope
    from fusion_prime.platform.runner import StartupRefusedError, load_settings
    from fusion_prime.risk.service import sweep
    from fusion_prime.risk.spec import SPEC

    async def _run() -> int:
        try:
            _, url = load_settings(SPEC)
        except StartupRefusedError as exc:
            console.print(str(exc), markup=False)
            return 2
        async with engine_scope(url, pool_size=1, app_name="risk-sweep") as engine:
            async with async_sessionmaker(engine)() as session, session.begin():
                out = await sweep(session)
        console.print(f"evaluated {out.evaluated}, changed {out.changed}, events {len(out.events)}")
        return 0

    raise typer.Exit(asyncio.run(_run()))
