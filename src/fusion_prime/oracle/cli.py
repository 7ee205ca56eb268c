"""`fusion-prime oracle init|poll-once|sources`: operator tools on DATABASE_URL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

app = typer.Typer(no_args_is_help=True, help="Price oracle administration.")
console = Console()


async def _with_sessions(
    name: str, work: Callable[[async_sessionmaker[AsyncSession], Any], Awaitable[int]]
) -> int:
    from fusion_prime.oracle.spec import SPEC
    from fusion_prime.platform.runner import with_sessions

    return await with_sessions(SPEC, name, work, lambda reason: console.print(reason, markup=False))


@app.command("init")
def init() -> None:
    """Create the default feeds (ETH-USD, WBTC-USD, USDC-USD) that do not exist yet."""
    from fusion_prime.oracle.domain import default_feeds
    from fusion_prime.oracle.service import ensure_defaults

    async def work(sessions: async_sessionmaker[AsyncSession], _: Any) -> int:
        async with sessions() as session, session.begin():
            made = await ensure_defaults(session, default_feeds())
        console.print(f"created: {', '.join(made)}" if made else "all default feeds exist")
        return 0

    raise typer.Exit(asyncio.run(_with_sessions("init", work)))


@app.command("poll-once")
def poll_once() -> None:
    """Run one polling round now (stored and published like the service's) and show it."""
    from fusion_prime.oracle.poller import poll_once as run_round

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Any) -> int:
        sources = settings.source_set()
        try:
            report = await run_round(sessions, sources)
        finally:
            await sources.close()
        table = Table(title=f"oracle round ({report.collect_seconds:.2f} s to collect)")
        for col in ("pair", "source", "value", "status", "latency ms", "reason"):
            table.add_column(col)
        for out in report.outcomes:
            r = out.result
            for j in r.judged:
                o = j.observation
                table.add_row(r.feed.pair, o.source, str(o.value) if o.value is not None else "-",
                              j.status.value, str(o.latency_ms), j.reason or "")  # fmt: skip
            agg = r.aggregate
            verdict = f"published ({out.published})" if out.published else "stored, not published"
            table.add_row(r.feed.pair, "[bold]aggregate[/bold]",
                          str(agg.price) if agg else "-", "ok" if agg else "degraded", "",
                          verdict if agg else (r.reason or ""), end_section=True)  # fmt: skip
        console.print(table)
        if not report.outcomes:
            console.print("no enabled feeds: run `fusion-prime oracle init` first")
        return 0

    raise typer.Exit(asyncio.run(_with_sessions("poll-once", work)))


@app.command("sources")
def sources() -> None:
    """Health of every source (success rate, last success, last error)."""
    from fusion_prime.oracle.service import sources_view

    async def work(sessions: async_sessionmaker[AsyncSession], _: Any) -> int:
        async with sessions() as session, session.begin():
            rows = await sources_view(session)
        table = Table(title="oracle sources")
        for col in ("source", "ok", "failed", "success rate", "last success", "last error"):
            table.add_column(col)
        for r in rows:
            error = f"{r['last_error_at']}: {r['last_error']}" if r["last_error"] else "-"
            table.add_row(r["source"], str(r["successes"]), str(r["failures"]),
                          r["success_rate"] or "-", r["last_success_at"] or "-", error)  # fmt: skip
        console.print(table)
        if not rows:
            console.print("no source has been polled yet")
        return 0

    raise typer.Exit(asyncio.run(_with_sessions("sources", work)))
