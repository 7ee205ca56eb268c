"""Use cases of the alert service. They run inside the caller's transaction (the request's
or the consumer's) and never commit."""

from __future__ import annotations

import json
import secrets
import uuid
from collections import Counter as Counter_
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import MultiFernet
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.alerts import repository as repo
from fusion_prime.alerts.domain import (
    Channel,
    Contact,
    Kind,
    Preferences,
    Status,
    classify,
    email_problem,
    phone_problem,
    plan,
    timezone_problem,
    url_problem,
)
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.errors import InvalidError, NotFoundError

NOTIFICATIONS = Counter(
    "fp_alerts_notifications_total", "Notifications stored, by initial status", ["status"]
)
EVENTS = Counter("fp_alerts_events_total", "Margin events consumed", ["outcome"])


@dataclass
class IngestOutcome:
    events: int = 0
    notifications: int = 0
    folded: int = 0


async def ingest(
    session: AsyncSession,
    envelopes: Sequence[Envelope],
    *,
    dedupe_window: float,
    retry_for: float,
) -> IngestOutcome:
    """Store every event and the notifications it causes, before anything is sent."""
    now: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
    items = []
    ev = repo.EventRows.empty()
    for e in envelopes:
        account = str(e.data.get("account_id") or e.subject)
        c = classify(e.type, e.data)
        items.append((e, account, c))
        ev.id.append(e.id)
        ev.account_id.append(account)
        ev.event_type.append(e.type)
        ev.kind.append(c.kind.value if c else None)
        ev.tier.append(c.tier if c else None)
        ev.from_tier.append(c.from_tier if c else e.data.get("from_tier"))
        ev.escalation.append(bool(c and c.escalation))
        ev.data.append(json.dumps(e.data, default=str, separators=(",", ":")))
        ev.event_time.append(e.time)
        ev.outcome.append("notified" if c else "not_alertable")
    accounts = sorted({a for _, a, c in items if c is not None})
    out = IngestOutcome(events=len(envelopes))
    records: list[tuple[Any, ...]] = []
    folds: dict[uuid.UUID, tuple[int, uuid.UUID]] = {}
    statuses: Counter_[str] = Counter_()
    if accounts:
        prefs, contacts = await repo.planning_context(session, accounts)
        horizon = max(
            [dedupe_window]
            + [p.dedupe_window or 0.0 for p in prefs.values()]
            + [max(p.min_interval.values(), default=0.0) for p in prefs.values()]
        )
        pairs = sorted({(a, c.kind.value) for _, a, c in items if c is not None})
        memory = await repo.load_memory(session, pairs, horizon)
        retry_span = timedelta(seconds=retry_for)
        for e, account, c in items:
            if c is None:
                continue
            for p in plan(
                account, c, now, prefs.get(account), contacts.get(account, ()), memory,
                dedupe_window,
            ):  # fmt: skip
                due = (p.not_before or now) if p.status is Status.PENDING else None
                records.append(
                    (
                        p.id, e.id, e.id, account, c.kind.value, c.tier, p.contact_id,
                        p.channel.value if p.channel else None, p.status.value, p.reason,
                        p.folded_into, c.escalation, due,
                        due + retry_span if due is not None else None,
                    )
                )  # fmt: skip
                statuses[p.status.value] += 1
                if p.folded_into is not None:
                    n, _ = folds.get(p.folded_into, (0, e.id))
                    folds[p.folded_into] = (n + 1, e.id)
                    out.folded += 1
    notified = sum(1 for _, _, c in items if c is not None)
    await repo.insert_events(session, ev)
    await repo.insert_notifications(session, records)
    await repo.fold(session, folds)
    if statuses[Status.PENDING.value]:
        await repo.wake_workers(session)  # delivered on commit; the worker also polls
    # counted per batch (a labelled counter per event costs more than the planning)
    EVENTS.labels("notified").inc(notified)
    EVENTS.labels("not_alertable").inc(len(items) - notified)
    for status, n in statuses.items():
        NOTIFICATIONS.labels(status).inc(n)
    out.notifications = len(records)
    return out


# -- contacts and preferences -------------------------------------------------------------


@dataclass(frozen=True)
class EndpointIn:
    channel: Channel
    address: str


def _check_endpoint(i: int, e: EndpointIn, allow_http: bool) -> None:
    field = f"channels.{i}.address"
    if e.channel is Channel.EMAIL:
        problem = email_problem(e.address)
    elif e.channel is Channel.SMS:
        problem = phone_problem(e.address)
    else:
        problem = url_problem(e.address, allow_http=allow_http)
    if problem:
        raise InvalidError(f"{field} {problem}", field=field)


def _mask(url: str) -> str:
    """Slack hook URLs are credentials: keep the host and the first path part only."""
    head, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    first = path.split("/")[0] if path else ""
    return f"{head}://{host}/{first}/\u2026" if first else f"{head}://{host}/\u2026"


async def create_contact(
    session: AsyncSession,
    fernet: MultiFernet,
    *,
    account_id: str,
    name: str,
    timezone: str,
    channels: Sequence[EndpointIn],
    allow_http: bool,
) -> tuple[dict[str, Any], str | None]:
    """Returns the contact and, when it has a webhook, its signing secret (shown once)."""
    if timezone_problem(timezone):
        raise InvalidError(f"timezone {timezone_problem(timezone)}", field="timezone")
    seen: set[Channel] = set()
    for i, e in enumerate(channels):
        if e.channel in seen:
            raise InvalidError(
                f"channels.{i}.channel {e.channel.value} is listed twice",
                field=f"channels.{i}.channel",
            )
        seen.add(e.channel)
        _check_endpoint(i, e, allow_http)
    webhook_secret: str | None = None
    endpoints = []
    for e in channels:
        if e.channel is Channel.WEBHOOK:
            webhook_secret = "whsec_" + secrets.token_urlsafe(32)
            endpoints.append(
                repo.NewEndpoint(e.channel, e.address, fernet.encrypt(webhook_secret.encode()))
            )
        elif e.channel is Channel.SLACK:
            endpoints.append(
                repo.NewEndpoint(e.channel, _mask(e.address), fernet.encrypt(e.address.encode()))
            )
        else:
            endpoints.append(repo.NewEndpoint(e.channel, e.address, None))
    cid = await repo.insert_contact(session, account_id, name, timezone, endpoints)
    return await get_contact(session, cid), webhook_secret


async def get_contact(session: AsyncSession, contact_id: uuid.UUID) -> dict[str, Any]:
    rows = await repo.contact_rows(session, contact_id=contact_id)
    if not rows:
        raise NotFoundError(f"contact {contact_id} does not exist")
    return rows[0]


async def delete_contact(session: AsyncSession, contact_id: uuid.UUID) -> None:
    if not await repo.delete_contact(session, contact_id):
        raise NotFoundError(f"contact {contact_id} does not exist")


async def put_preferences(session: AsyncSession, prefs: Preferences) -> Preferences:
    if prefs.recipients is not None:
        live = await repo.live_contact_ids(session, prefs.account_id)
        for i, cid in enumerate(prefs.recipients):
            if cid not in live:
                raise InvalidError(
                    f"recipients.{i} {cid} is not a contact of account {prefs.account_id}",
                    field=f"recipients.{i}",
                )
    await repo.upsert_preferences(session, prefs)
    return prefs


async def get_preferences(session: AsyncSession, account_id: str) -> Preferences:
    rows = await repo.preference_rows(session, [account_id])
    if account_id not in rows:
        raise NotFoundError(f"account {account_id} has no notification preferences")
    return repo.to_preferences(rows[account_id])


async def create_test_notification(
    session: AsyncSession, contact: Contact, channel: Channel, kind: Kind, retry_for: float
) -> uuid.UUID:
    """A notification marked `test` (never folded, never failed over) with example values,
    so the recipient sees the real layout of that kind."""
    tier = {"reminder": "margin_call", "price_unavailable": "unknown_price"}.get(
        kind.value, kind.value
    )
    sample: dict[str, Any] = {
        "event_type": "test",
        "account_id": contact.account_id,
        "from_tier": None,
        "to_tier": tier,
        "factor": None,
        "prices": {},
        "note": "test message: the values of a real alert appear here",
    }
    nid = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO notifications (id, account_id, kind, tier, contact_id, channel, status, "
            "reason, test, payload, next_attempt_at, retry_until) VALUES (:id, :a, :k, :t, :c, "
            ":ch, 'pending', 'test-send', true, CAST(:p AS jsonb), now() + interval '1 hour', "
            "now() + make_interval(secs => :rf))"
        ),
        {
            "id": nid,
            "a": contact.account_id,
            "k": kind.value,
            "t": tier,
            "c": contact.id,
            "ch": channel.value,
            "p": json.dumps(sample),
            "rf": retry_for,
        },
    )
    return nid
