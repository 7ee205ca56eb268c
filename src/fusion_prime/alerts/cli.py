"""`fusion-prime alerts notifications|retry|test-send`: operator tools on DATABASE_URL.

The same code paths as the API (`GET /notifications`, `POST /notifications/{id}/retry`,
`POST /test-send`), for an operator at a shell next to the service's database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.alerts.domain import Channel, Kind, Status

app = typer.Typer(no_args_is_help=True, help="Alert notifications administration.")
console = Console()


async def _with_sessions(
    name: str, work: Callable[[async_sessionmaker[AsyncSession], Any], Awaitable[int]]
) -> int:
    from fusion_prime.alerts.spec import SPEC
    from fusion_prime.platform.runner import with_sessions

    return await with_sessions(SPEC, name, work, lambda reason: console.print(reason, markup=False))


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("id", "created", "account", "kind", "tier", "channel", "status", "attempts",
                "reason / last error"):  # fmt: skip
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["id"]), r["created_at"].isoformat(timespec="seconds"), r["account_id"],
            r["kind"], r["tier"], r["channel"] or "-", r["status"], str(r["attempts"]),
            r["last_error"] or r["reason"] or "",
        )  # fmt: skip
    return table


@app.command("notifications")
def notifications(
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    status: Annotated[Status | None, typer.Option(help="only this status")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """The newest notifications (newest last), with their status and last error."""
    from fusion_prime.alerts import repository as repo

    async def work(sessions: async_sessionmaker[AsyncSession], _: Any) -> int:
        async with sessions() as session:
            rows = await repo.latest_notifications(
                session, account=account, status=status.value if status else None, limit=limit
            )
        console.print(_table(f"notifications ({len(rows)})", rows))
        return 0

    raise typer.Exit(asyncio.run(_with_sessions("notifications", work)))


@app.command("retry")
def retry(notification_id: uuid.UUID) -> None:
    """Make a failed delivery due now, with a fresh retry period (the worker sends it)."""
    from fusion_prime.alerts import repository as repo

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Any) -> int:
        async with sessions() as session, session.begin():
            row = await repo.get_notification(session, notification_id)
            if row is None:
                console.print(f"notification {notification_id} does not exist", markup=False)
                return 1
            if await repo.reopen(session, notification_id, settings.retry_for) is None:
                console.print(
                    f"notification {notification_id} is {row['status']}: only a failed "
                    "delivery to a contact can be retried",
                    markup=False,
                )
                return 1
            await repo.wake_workers(session)
        console.print(f"notification {notification_id} is pending again", markup=False)
        return 0

    raise typer.Exit(asyncio.run(_with_sessions("retry", work)))


@app.command("test-send")
def send_test_message(
    contact_id: uuid.UUID,
    channel: Annotated[Channel | None, typer.Option(help="default: the contact's first")] = None,
    kind: Annotated[Kind, typer.Option(help="whose template to send")] = Kind.WARNING,
) -> None:
    """Send a [TEST] message to a contact now and show the recorded attempt."""
    from fusion_prime.alerts import repository as repo
    from fusion_prime.alerts.delivery import send_test
    from fusion_prime.platform.errors import InvalidError, NotFoundError

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Any) -> int:
        try:
            nid = await send_test(sessions, settings, contact_id, channel, kind)
        except (InvalidError, NotFoundError) as exc:
            console.print(str(exc), markup=False)
            return 1
        async with sessions() as session:
            row = await repo.get_notification(session, nid)
        assert row is not None
        console.print(_table("test message", [row]))
        for a in row["attempt_log"]:
            console.print(
                f"attempt {a['attempt']}: {a['outcome']} code={a['response_code']} "
                f"{a['latency_ms']} ms {a['error'] or a['response'] or ''}",
                markup=False,
            )
        return 0 if row["status"] == Status.SENT.value else 1

    raise typer.Exit(asyncio.run(_with_sessions("test-send", work)))
