"""`fusion-prime events ...`: migrate the bus, publish backfills, inspect and replay dead letters.

Commands read FP_BUS / FP_BUS_URL / GCP_PROJECT from the environment like a service does.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker, migrate_bus
from fusion_prime.platform.bus.registry import topic as lookup_topic
from fusion_prime.platform.bus.wiring import normalise_bus_url
from fusion_prime.platform.database import redact_url

app = typer.Typer(no_args_is_help=True, help="The event bus: migrate, publish, dead letters.")
console = Console()
err = Console(stderr=True)


def _bus_url() -> str:
    try:
        url = normalise_bus_url(os.environ.get("FP_BUS_URL"), "events")
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    return url.render_as_string(False)


@app.command()
def migrate() -> None:
    """Migrate the bus database (FP_BUS_URL) and declare the registry's subscriptions."""
    url = _bus_url()
    n = asyncio.run(migrate_bus(url))
    console.print(f"bus database {redact_url(url)} at head; {n} registry subscriptions declared")


def parse_lines(topic: str, text: str) -> tuple[list[Envelope], list[str]]:
    """Every line validated; returns the envelopes and one error per bad line (1-based)."""
    t = lookup_topic(topic)
    envelopes: list[Envelope] = []
    errors: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            env = Envelope.from_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "line"
            errors.append(f"line {lineno}: {where}: {first.get('msg', '')}")
            continue
        if env.type not in t.event_types:
            errors.append(f"line {lineno}: type {env.type!r} is not an event type of {topic}")
            continue
        envelopes.append(env)
    ids = [e.id for e in envelopes]
    if len(set(ids)) != len(ids):
        errors.append("the file repeats an event id")
    return envelopes, errors


@app.command()
def publish(
    topic: Annotated[str, typer.Argument(help="registry topic, e.g. settlement.events.v1")],
    file: Annotated[Path, typer.Argument(help="JSON lines, one envelope per line", exists=True)],
) -> None:
    """Publish a file of envelopes: all of them, or none if any line is invalid."""
    try:
        lookup_topic(topic)
    except KeyError as exc:
        err.print(str(exc.args[0]))
        raise typer.Exit(2) from None
    envelopes, errors = parse_lines(topic, file.read_text())
    if errors:
        for e in errors:
            err.print(f"{file}: {e}")
        err.print(f"nothing published: {len(errors)} bad line(s)")
        raise typer.Exit(1)
    events = [OutgoingEvent(e.id, topic, e.subject, e.type, e.to_json()) for e in envelopes]
    if os.environ.get("FP_BUS", "postgres") == "pubsub":
        from fusion_prime.platform.bus.pubsub import PubSubPublisher

        project = os.environ.get("GCP_PROJECT")
        if not project:
            err.print("FP_BUS=pubsub needs GCP_PROJECT")
            raise typer.Exit(2)
        accepted = asyncio.run(PubSubPublisher(project).publish(events)).accepted
        if len(accepted) != len(events):
            err.print(f"only {len(accepted)} of {len(events)} accepted by Pub/Sub")
            raise typer.Exit(1)
    else:
        url = _bus_url()

        async def _go() -> None:
            async with PostgresBroker(url, pool_size=1) as broker:
                await broker.publish(events)

        asyncio.run(_go())
    console.print(f"published {len(events)} events to {topic}")


@app.command("dead-letters")
def dead_letters(
    subscription: Annotated[str | None, typer.Option(help="only this subscription")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include replayed ones")] = False,
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 100,
) -> None:
    """List dead letters with their error and attempt count."""
    url = _bus_url()

    async def _go() -> None:
        async with PostgresBroker(url, pool_size=1) as broker:
            rows = await broker.dead_letters(subscription, include_replayed=all_, limit=limit)
        table = Table(title="dead letters")
        for col in ("id", "subscription", "event id", "type", "subject", "attempts", "dead at"):
            table.add_column(col)
        table.add_column("error", overflow="fold")
        table.add_column("replayed")
        for d in rows:
            table.add_row(
                str(d.id),
                d.subscription,
                str(d.event_id),
                d.event_type,
                d.subject,
                str(d.attempts),
                d.dead_at.isoformat(timespec="seconds"),
                d.error.splitlines()[0][:200] if d.error else "",
                d.replayed_at.isoformat(timespec="seconds") if d.replayed_at else "",
            )
        console.print(table)
        if not rows:
            console.print("no dead letters")

    asyncio.run(_go())


def _cli_actor() -> str:
    """Who replays from the command line: it reaches the bus database directly, with no
    API key, so the record names the operating-system user and host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a name
        user = f"uid {os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"


@app.command()
def replay(dead_letter_id: Annotated[int, typer.Argument(help="id from `dead-letters`")]) -> None:
    """Queue one dead letter again (fresh attempts) for its subscription."""
    url = _bus_url()

    async def _go() -> None:
        async with PostgresBroker(url, pool_size=1) as broker:
            d = await broker.replay(dead_letter_id, by=_cli_actor())
        console.print(f"dead letter {d.id} (event {d.event_id}) re-queued for {d.subscription}")

    try:
        asyncio.run(_go())
    except (KeyError, ValueError) as exc:
        err.print(str(exc.args[0]) if exc.args else str(exc))
        raise typer.Exit(1) from None


@app.command()
def outbox(
    replay: Annotated[
        int | None, typer.Option(help="re-queue this dead-lettered outbox row (its seq)")
    ] = None,
) -> None:
    """Dead-lettered rows of a service's outbox (DATABASE_URL): refused by the broker
    FP_BUS_RELAY_MAX_ATTEMPTS times, no longer relayed. `--replay SEQ` re-queues one."""
    import asyncpg

    from fusion_prime.platform.admin import asyncpg_dsn
    from fusion_prime.platform.bus.relay import DEAD_LETTERED_SQL
    from fusion_prime.platform.database import DatabaseConfigError, normalise_database_url
    from fusion_prime.platform.settings import BaseServiceSettings

    try:
        url = normalise_database_url(os.environ.get("DATABASE_URL"), service="events")
    except DatabaseConfigError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    max_attempts = BaseServiceSettings.model_fields["bus_relay_max_attempts"].default
    raw = os.environ.get("FP_BUS_RELAY_MAX_ATTEMPTS")
    if raw:
        max_attempts = int(raw)
    where = DEAD_LETTERED_SQL.replace(":max", "$1")

    async def _go() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            if replay is not None:
                done = await conn.execute(
                    f"UPDATE outbox SET attempts = 0 WHERE seq = $2 AND {where}",
                    max_attempts,
                    replay,
                )
                if done.split()[-1] == "0":
                    err.print(f"outbox row {replay} is not dead-lettered")
                    raise typer.Exit(1)
                console.print(f"outbox row {replay} re-queued for the relay")
                return
            rows = await conn.fetch(
                "SELECT seq, id, topic, subject, event_type, attempts, created_at, last_error "
                f"FROM outbox WHERE {where} ORDER BY seq",
                max_attempts,
            )
        finally:
            await conn.close()
        table = Table(title=f"dead-lettered outbox rows ({redact_url(url)})")
        for col in ("seq", "event id", "topic", "type", "subject", "attempts", "created"):
            table.add_column(col)
        table.add_column("error", overflow="fold")
        for r in rows:
            table.add_row(
                str(r["seq"]),
                str(r["id"]),
                r["topic"],
                r["event_type"],
                r["subject"][:80],
                str(r["attempts"]),
                r["created_at"].isoformat(timespec="seconds"),
                (r["last_error"] or "").splitlines()[0][:200] if r["last_error"] else "",
            )
        console.print(table)
        if not rows:
            console.print("no dead-lettered outbox rows")

    asyncio.run(_go())


@app.command()
def status() -> None:
    """Per subscription: ready, leased, acked (retained) and dead messages."""
    url = _bus_url()

    async def _go() -> None:
        async with PostgresBroker(url, pool_size=1) as broker:
            rows = await broker.status()
        table = Table(title="event bus")
        for col in ("topic", "subscription", "ready", "leased", "acked", "dead"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["topic"],
                r["subscription"],
                str(r["ready"]),
                str(r["leased"]),
                str(r["acked"]),
                str(r["dead"]),
            )
        console.print(table)

    asyncio.run(_go())
