"""SQL of the alert service. Bulk writes of a consumed batch go through asyncpg (typed
arrays, COPY); the delivery worker's through one jsonb_to_recordset statement each, so a
batch costs a handful of round trips."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.alerts import models as m
from fusion_prime.alerts.domain import (
    Channel,
    Contact,
    Endpoint,
    Kind,
    Memory,
    Preferences,
)
from fusion_prime.platform.database import driver_connection

# -- contacts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewEndpoint:
    channel: Channel
    address: str
    secret_ciphertext: bytes | None


async def insert_contact(
    session: AsyncSession,
    account_id: str,
    name: str,
    timezone: str,
    endpoints: Sequence[NewEndpoint],
) -> uuid.UUID:
    cid = uuid.uuid4()
    await session.execute(
        text("INSERT INTO contacts (id, account_id, name, timezone) VALUES (:id, :a, :n, :tz)"),
        {"id": cid, "a": account_id, "n": name, "tz": timezone},
    )
    await session.execute(
        text(
            "INSERT INTO contact_endpoints (contact_id, channel, position, address, "
            "secret_ciphertext) VALUES (:c, :ch, :p, :addr, :s)"
        ),
        [
            {"c": cid, "ch": e.channel.value, "p": i, "addr": e.address, "s": e.secret_ciphertext}
            for i, e in enumerate(endpoints)
        ],
    )
    return cid


async def contact_rows(
    session: AsyncSession,
    *,
    contact_id: uuid.UUID | None = None,
    account_id: str | None = None,
    accounts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Live (not deleted) contacts with their endpoints in order (no secrets)."""
    where = ["c.deleted_at IS NULL"]
    params: dict[str, Any] = {}
    if contact_id is not None:
        where.append("c.id = :id")
        params["id"] = contact_id
    if account_id is not None:
        where.append("c.account_id = :a")
        params["a"] = account_id
    if accounts is not None:
        where.append("c.account_id = ANY(:accs)")
        params["accs"] = list(accounts)
    rows = await session.execute(
        text(
            "SELECT c.id, c.account_id, c.name, c.timezone, c.created_at, "
            "coalesce((SELECT json_agg(json_build_object('channel', e.channel, 'address', "
            "e.address, 'position', e.position) ORDER BY e.position) FROM contact_endpoints e "
            "WHERE e.contact_id = c.id), '[]') AS channels "
            f"FROM contacts c WHERE {' AND '.join(where)} ORDER BY c.created_at, c.id"
        ),
        params,
    )
    return [dict(r) for r in rows.mappings()]


def to_contact(row: Mapping[str, Any]) -> Contact:
    return Contact(
        id=row["id"],
        account_id=row["account_id"],
        name=row["name"],
        timezone=row["timezone"],
        endpoints=tuple(
            Endpoint(Channel(e["channel"]), e["address"], e["position"]) for e in row["channels"]
        ),
    )


async def delete_contact(session: AsyncSession, contact_id: uuid.UUID) -> bool:
    """Soft delete: its notifications keep pointing at it; nothing new is sent to it."""
    row = await session.execute(
        text(
            "UPDATE contacts SET deleted_at = now() WHERE id = :id AND deleted_at IS NULL "
            "RETURNING id"
        ),
        {"id": contact_id},
    )
    return row.first() is not None


async def live_contact_ids(session: AsyncSession, account_id: str) -> set[uuid.UUID]:
    rows = await session.execute(
        text("SELECT id FROM contacts WHERE account_id = :a AND deleted_at IS NULL"),
        {"a": account_id},
    )
    return {r[0] for r in rows}


# -- preferences -------------------------------------------------------------------------


async def upsert_preferences(session: AsyncSession, p: Preferences) -> None:
    values = {
        "account_id": p.account_id,
        "kinds": sorted(k.value for k in p.kinds),
        "channels": [c.value for c in p.channels],
        "recipients": list(p.recipients) if p.recipients is not None else None,
        "quiet_start": p.quiet_start,
        "quiet_end": p.quiet_end,
        "quiet_bypass": sorted(k.value for k in p.quiet_bypass),
        "min_interval": dict(p.min_interval),
        "dedupe_window_seconds": int(p.dedupe_window) if p.dedupe_window is not None else None,
    }
    stmt = sa.dialects.postgresql.insert(m.preferences).values(**values, updated_at=sa.func.now())
    stmt = stmt.on_conflict_do_update(
        index_elements=[m.preferences.c.account_id],
        set_={k: stmt.excluded[k] for k in [*values, "updated_at"] if k != "account_id"},
    )
    await session.execute(stmt)


def to_preferences(row: Mapping[str, Any]) -> Preferences:
    return Preferences(
        account_id=row["account_id"],
        kinds=frozenset(Kind(k) for k in row["kinds"]),
        channels=tuple(Channel(c) for c in row["channels"]),
        recipients=tuple(row["recipients"]) if row["recipients"] is not None else None,
        quiet_start=row["quiet_start"],
        quiet_end=row["quiet_end"],
        quiet_bypass=frozenset(Kind(k) for k in row["quiet_bypass"]),
        min_interval={k: float(v) for k, v in (row["min_interval"] or {}).items()},
        dedupe_window=(
            float(row["dedupe_window_seconds"])
            if row["dedupe_window_seconds"] is not None
            else None
        ),
    )


async def preference_rows(
    session: AsyncSession, accounts: Sequence[str]
) -> dict[str, dict[str, Any]]:
    rows = await session.execute(
        sa.select(m.preferences).where(m.preferences.c.account_id.in_(list(accounts)))
    )
    return {r["account_id"]: dict(r) for r in rows.mappings()}


# -- what the planner needs, and the bulk writes of a consumed batch ---------------------
#
# The consumer's hot path talks to asyncpg directly (inside the session's transaction):
# typed arrays and COPY instead of JSON documents, records instead of ORM rows. A batch
# of 500 events costs five statements and one COPY.

_KINDS = {k.value: k for k in Kind}
_CHANNELS = {c.value: c for c in Channel}


def _intervals(text_value: str) -> dict[str, float]:
    """`min_interval` read as text: most are empty, and the driver's jsonb decoder costs
    more than the rest of a preferences row."""
    if text_value == "{}":
        return {}
    return {k: float(v) for k, v in json.loads(text_value).items()}


async def planning_context(
    session: AsyncSession, accounts: Sequence[str]
) -> tuple[dict[str, Preferences], dict[str, list[Contact]]]:
    """Preferences and live contacts (endpoints in order) of the accounts."""
    apg = await driver_connection(session)
    prefs: dict[str, Preferences] = {}
    for r in await apg.fetch(
        "SELECT account_id, kinds, channels, recipients, quiet_start, quiet_end, quiet_bypass, "
        "min_interval::text, dedupe_window_seconds FROM preferences "
        "WHERE account_id = ANY($1::text[])",
        accounts,
    ):
        prefs[r[0]] = Preferences(
            account_id=r[0],
            kinds=frozenset(_KINDS[k] for k in r[1]),
            channels=tuple(_CHANNELS[c] for c in r[2]),
            recipients=tuple(r[3]) if r[3] is not None else None,
            quiet_start=r[4],
            quiet_end=r[5],
            quiet_bypass=frozenset(_KINDS[k] for k in r[6]),
            min_interval=_intervals(r[7]),
            dedupe_window=float(r[8]) if r[8] is not None else None,
        )
    contacts: dict[str, list[Contact]] = {}
    for r in await apg.fetch(
        "SELECT c.id, c.account_id, c.name, c.timezone, array_agg(e.channel ORDER BY "
        "e.position), array_agg(e.address ORDER BY e.position), array_agg(e.position ORDER BY "
        "e.position) FROM contacts c JOIN contact_endpoints e ON e.contact_id = c.id "
        "WHERE c.account_id = ANY($1::text[]) AND c.deleted_at IS NULL "
        "GROUP BY c.id ORDER BY c.created_at, c.id",
        accounts,
    ):
        endpoints = tuple(
            Endpoint(_CHANNELS[ch], addr, pos)
            for ch, addr, pos in zip(r[4], r[5], r[6], strict=True)
        )
        contacts.setdefault(r[1], []).append(Contact(r[0], r[1], r[2], r[3], endpoints))
    return prefs, contacts


async def load_memory(
    session: AsyncSession, pairs: Sequence[tuple[str, str]], horizon: float
) -> Memory:
    """The newest live notification per (account, kind, tier, contact, channel) within
    `horizon` seconds, for the accounts and kinds of a batch's (account, kind) pairs
    (every key of the planner's memory has both): open ones for dedupe, the last one of
    a kind for intervals."""
    memory = Memory()
    if horizon <= 0 or not pairs:
        return memory
    apg = await driver_connection(session)
    rows = await apg.fetch(
        "SELECT DISTINCT ON (account_id, kind, tier, contact_id, channel) account_id, kind, "
        "tier, contact_id, channel, id, created_at FROM notifications "
        "WHERE account_id = ANY($1::text[]) AND kind = ANY($2::text[]) "
        "AND status IN ('pending','sent','delivered') "
        "AND contact_id IS NOT NULL AND failover_of IS NULL AND NOT test "
        "AND created_at > now() - make_interval(secs => $3) "
        "ORDER BY account_id, kind, tier, contact_id, channel, created_at DESC",
        sorted({a for a, _ in pairs}),
        sorted({k for _, k in pairs}),
        float(horizon),
    )
    last = memory.last
    for account, kind, tier, contact, channel, nid, created in rows:
        memory.open[(account, kind, tier, contact, channel)] = (nid, created)
        lkey = (account, kind, contact, channel)
        if lkey not in last or last[lkey] < created:
            last[lkey] = created
    return memory


@dataclass
class EventRows:
    """Columns of the `events` rows of a batch (one list per column)."""

    id: list[uuid.UUID]
    account_id: list[str]
    event_type: list[str]
    kind: list[str | None]
    tier: list[str | None]
    from_tier: list[str | None]
    escalation: list[bool]
    data: list[str]  # JSON text
    event_time: list[datetime]
    outcome: list[str]

    @classmethod
    def empty(cls) -> EventRows:
        return cls([], [], [], [], [], [], [], [], [], [])


async def insert_events(session: AsyncSession, rows: EventRows) -> None:
    if not rows.id:
        return
    apg = await driver_connection(session)
    await apg.execute(
        "INSERT INTO events (id, account_id, event_type, kind, tier, from_tier, escalation, "
        "data, event_time, outcome) SELECT r.id, r.a, r.t, r.k, r.ti, r.f, r.e, r.d::jsonb, "
        "r.at, r.o FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::boolean[], $8::text[], $9::timestamptz[], $10::text[]) "
        "AS r(id, a, t, k, ti, f, e, d, at, o) ON CONFLICT (id) DO NOTHING",
        rows.id, rows.account_id, rows.event_type, rows.kind, rows.tier, rows.from_tier,
        rows.escalation, rows.data, rows.event_time, rows.outcome,
    )  # fmt: skip


NOTIFICATION_COPY_COLUMNS = (
    "id", "event_id", "latest_event_id", "account_id", "kind", "tier", "contact_id", "channel",
    "status", "reason", "folded_into", "escalation", "next_attempt_at", "retry_until",
)  # fmt: skip


async def insert_notifications(session: AsyncSession, records: Sequence[tuple[Any, ...]]) -> None:
    """New notifications (fresh ids), in NOTIFICATION_COPY_COLUMNS order, by COPY."""
    if not records:
        return
    apg = await driver_connection(session)
    await apg.copy_records_to_table(
        "notifications", records=records, columns=NOTIFICATION_COPY_COLUMNS
    )


async def fold(session: AsyncSession, folds: Mapping[uuid.UUID, tuple[int, uuid.UUID]]) -> None:
    """Add folded events to open notifications: the count and the latest event (whose
    values a still pending notification will send)."""
    if not folds:
        return
    apg = await driver_connection(session)
    await apg.execute(
        "UPDATE notifications n SET fold_count = n.fold_count + r.n, latest_event_id = r.latest, "
        "updated_at = now() FROM unnest($1::uuid[], $2::int[], $3::uuid[]) AS r(id, n, latest) "
        "WHERE n.id = r.id",
        list(folds), [n for n, _ in folds.values()], [latest for _, latest in folds.values()],
    )  # fmt: skip


def _json(rows: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps(list(rows), default=str, separators=(",", ":"))


# -- the delivery worker -----------------------------------------------------------------

PENDING_CHANNEL = "fp_alerts_pending"


async def wake_workers(session: AsyncSession) -> None:
    """NOTIFY the delivery workers; PostgreSQL sends it when the transaction commits."""
    await session.execute(text(f"SELECT pg_notify('{PENDING_CHANNEL}', '')"))


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    event_id: uuid.UUID | None
    latest_event_id: uuid.UUID | None
    account_id: str
    kind: str
    tier: str
    contact_id: uuid.UUID
    channel: str
    payload: dict[str, Any]
    fold_count: int
    attempts: int
    retry_until: datetime
    test: bool
    address: str | None
    secret_ciphertext: bytes | None
    contact_deleted: bool


_CLAIMED_COLS = (
    "n.id, n.event_id, n.latest_event_id, n.account_id, n.kind, n.tier, n.contact_id, "
    "n.channel, coalesce(n.payload, le.data || jsonb_build_object('event_type', "
    "le.event_type), '{}') AS payload, "
    "n.fold_count, n.attempts, n.retry_until, n.test, e.address, e.secret_ciphertext, "
    "(c.deleted_at IS NOT NULL) AS contact_deleted"
)
# the contact's endpoint for the channel, and the event whose values are sent
_CLAIMED_JOINS = (
    "JOIN contacts c ON c.id = n.contact_id "
    "LEFT JOIN contact_endpoints e ON e.contact_id = n.contact_id AND e.channel = n.channel "
    "LEFT JOIN events le ON le.id = n.latest_event_id"
)


async def claim_due(session: AsyncSession, limit: int, lease: float) -> list[Claimed]:
    """Reserve due deliveries for `lease` seconds (SKIP LOCKED: workers never share one).
    A worker that dies mid-send leaves them due again when the lease runs out."""
    rows = await session.execute(
        text(
            "WITH due AS (SELECT id FROM notifications WHERE status = 'pending' "
            "AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT :n "
            "FOR UPDATE SKIP LOCKED), "
            "upd AS (UPDATE notifications n SET next_attempt_at = now() "
            "+ make_interval(secs => :lease) FROM due WHERE n.id = due.id RETURNING n.*) "
            f"SELECT {_CLAIMED_COLS} FROM upd n {_CLAIMED_JOINS}"
        ),
        {"n": limit, "lease": lease},
    )
    return [Claimed(**dict(r)) for r in rows.mappings()]


async def claim_one(
    session: AsyncSession, notification_id: uuid.UUID, lease: float
) -> Claimed | None:
    rows = await session.execute(
        text(
            "WITH upd AS (UPDATE notifications n SET next_attempt_at = now() "
            "+ make_interval(secs => :lease) WHERE n.id = :id AND n.status = 'pending' "
            "RETURNING n.*) "
            f"SELECT {_CLAIMED_COLS} FROM upd n {_CLAIMED_JOINS}"
        ),
        {"id": notification_id, "lease": lease},
    )
    row = rows.mappings().first()
    return Claimed(**dict(row)) if row else None


async def record_attempts(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    await session.execute(
        text(
            "INSERT INTO delivery_attempts (notification_id, attempt, channel, attempted_at, "
            "latency_ms, response_code, response, error, outcome) SELECT r.n, r.a, r.ch, r.at, "
            "r.ms, r.code, r.resp, r.err, r.o FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
            "AS r(n uuid, a int, ch text, at timestamptz, ms int, code int, resp text, "
            "err text, o text)"
        ),
        {"rows": _json(rows)},
    )


async def mark_sent_many(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """The provider accepted: `sent` (never `delivered`: that needs its confirmation)."""
    if not rows:
        return
    await session.execute(
        text(
            "UPDATE notifications n SET status = 'sent', attempts = n.attempts + 1, "
            "sent_at = now(), updated_at = now(), next_attempt_at = NULL, last_error = NULL, "
            "provider_ref = r.ref, sent_event_id = r.latest "
            "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id uuid, ref text, latest uuid) "
            "WHERE n.id = r.id"
        ),
        {"rows": _json(rows)},
    )


async def mark_retry_many(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    await session.execute(
        text(
            "UPDATE notifications n SET attempts = n.attempts + 1, updated_at = now(), "
            "last_error = r.e, next_attempt_at = now() + make_interval(secs => r.d) "
            "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id uuid, e text, d float8) "
            "WHERE n.id = r.id"
        ),
        {"rows": _json(rows)},
    )


async def mark_failed(session: AsyncSession, c: Claimed, error: str, attempted: bool) -> None:
    await session.execute(
        text(
            "UPDATE notifications SET status = 'failed', attempts = attempts + :inc, "
            "updated_at = now(), last_error = :e, reason = :e, next_attempt_at = NULL "
            "WHERE id = :id"
        ),
        {"id": c.id, "e": error[:1000], "inc": 1 if attempted else 0},
    )


@dataclass(frozen=True)
class Reported:
    """A notification a provider's delivery report changed (what failover needs)."""

    id: uuid.UUID
    status: str
    tier: str
    test: bool
    contact_id: uuid.UUID
    event_id: uuid.UUID | None
    contact_deleted: bool


_REPORTED = (
    "RETURNING n.id, n.status, n.tier, n.test, n.contact_id, n.event_id, "
    "EXISTS (SELECT 1 FROM contacts c WHERE c.id = n.contact_id "
    "AND c.deleted_at IS NOT NULL) AS contact_deleted"
)
_APPLY_REPORT = (
    "status = CASE WHEN r.delivered THEN 'delivered' ELSE 'failed' END, updated_at = now(), "
    "delivered_at = CASE WHEN r.delivered THEN now() ELSE n.delivered_at END, "
    "reason = CASE WHEN r.delivered THEN n.reason ELSE r.detail END, "
    "last_error = CASE WHEN r.delivered THEN n.last_error ELSE r.detail END"
)


async def lock_provider_refs(session: AsyncSession, channel: str, refs: Sequence[str]) -> None:
    """Serialise a report for a message with the transaction recording that message as
    sent (transaction-scoped advisory locks, taken in one order): the report then either
    finds the notification sent, or is parked before that transaction looks for it."""
    if refs:
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended(:ch || ':' || r, 0)) "
                "FROM unnest(CAST(:refs AS text[])) AS r ORDER BY r"
            ),
            {"ch": channel, "refs": sorted(set(refs))},
        )


async def provider_report(
    session: AsyncSession, channel: str, provider_ref: str, delivered: bool, detail: str
) -> Reported | None:
    """A delivery report from the provider: `sent` becomes `delivered`, or `failed` with
    the provider's reason. A report for a message not (yet) recorded as sent is parked in
    `provider_reports` and applied when it is (None is returned then)."""
    await lock_provider_refs(session, channel, [provider_ref])
    params = {"ok": delivered, "detail": detail, "ch": channel, "ref": provider_ref}
    row = (
        await session.execute(
            text(
                f"UPDATE notifications n SET {_APPLY_REPORT} "
                "FROM (SELECT CAST(:ok AS boolean) AS delivered, "
                "CAST(:detail AS text) AS detail) r "
                "WHERE n.channel = :ch AND n.provider_ref = :ref "
                f"AND n.status IN ('sent','delivered') {_REPORTED}"
            ),
            params,
        )
    ).first()
    if row is not None:
        return Reported(*row)
    await session.execute(
        text(
            "INSERT INTO provider_reports (channel, provider_ref, delivered, detail) "
            "VALUES (:ch, :ref, :ok, :detail) ON CONFLICT (channel, provider_ref) DO UPDATE "
            "SET delivered = excluded.delivered, detail = excluded.detail, received_at = now()"
        ),
        params,
    )
    return None


async def apply_parked_reports(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[Reported]:
    """Reports that arrived before these notifications were recorded as sent (call after
    marking them sent, in the same transaction, under lock_provider_refs)."""
    if not ids:
        return []
    rows = await session.execute(
        text(
            "WITH r AS (DELETE FROM provider_reports p USING notifications m "
            "WHERE m.id = ANY(CAST(:ids AS uuid[])) AND p.channel = m.channel "
            "AND p.provider_ref = m.provider_ref RETURNING m.id AS nid, p.delivered, p.detail) "
            f"UPDATE notifications n SET {_APPLY_REPORT} FROM r WHERE n.id = r.nid "
            f"AND n.status = 'sent' {_REPORTED}"
        ),
        {"ids": list(ids)},
    )
    return [Reported(*r) for r in rows]


async def failover_root(session: AsyncSession, nid: uuid.UUID) -> uuid.UUID:
    """The first notification of a failover chain (the one the event created)."""
    row = (
        await session.execute(
            text("SELECT coalesce(failover_of, id) FROM notifications WHERE id = :id"),
            {"id": nid},
        )
    ).scalar_one()
    return uuid.UUID(str(row))


async def used_channels(
    session: AsyncSession, event_id: uuid.UUID | None, contact_id: uuid.UUID, root: uuid.UUID
) -> set[str]:
    """Channels this recipient was already tried on for the event (or the failover chain)."""
    rows = await session.execute(
        text(
            "SELECT channel FROM notifications WHERE contact_id = :c AND channel IS NOT NULL "
            "AND ((CAST(:e AS uuid) IS NOT NULL AND event_id = CAST(:e AS uuid)) "
            "OR id = :root OR failover_of = :root)"
        ),
        {"c": contact_id, "e": event_id, "root": root},
    )
    return {r[0] for r in rows}


async def insert_failover(
    session: AsyncSession, c: Claimed | Reported, channel: str, retry_for: float
) -> uuid.UUID:
    nid = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO notifications (id, event_id, latest_event_id, account_id, kind, tier, "
            "contact_id, channel, status, reason, fold_count, escalation, test, failover_of, "
            "payload, next_attempt_at, retry_until) "
            "SELECT :nid, event_id, latest_event_id, account_id, kind, tier, contact_id, :ch, "
            "'pending', 'failover from ' || channel, fold_count, escalation, test, :root, "
            "payload, now(), now() + make_interval(secs => :rf) FROM notifications WHERE id = :id"
        ),
        {"nid": nid, "ch": channel, "root": c.id, "rf": retry_for, "id": c.id},
    )
    return nid


async def endpoint_secret(
    session: AsyncSession, contact_id: uuid.UUID, channel: str
) -> tuple[str, bytes | None] | None:
    row = (
        await session.execute(
            text(
                "SELECT address, secret_ciphertext FROM contact_endpoints "
                "WHERE contact_id = :c AND channel = :ch"
            ),
            {"c": contact_id, "ch": channel},
        )
    ).first()
    return (row[0], row[1]) if row else None


async def queue_stats(session: AsyncSession) -> tuple[int, float]:
    row = (
        await session.execute(
            text(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) "
                "FROM notifications WHERE status = 'pending'"
            )
        )
    ).one()
    return int(row[0]), float(row[1])


# -- reads for the API ---------------------------------------------------------------------

NOTIFICATION_COLUMNS = (
    "id, event_id, latest_event_id, account_id, kind, tier, contact_id, channel, status, "
    "reason, folded_into, fold_count, escalation, test, failover_of, attempts, "
    "next_attempt_at, retry_until, last_error, provider_ref, created_at, updated_at, sent_at, "
    "delivered_at"
)


async def list_notifications(
    session: AsyncSession,
    *,
    account: str | None,
    status: str | None,
    since: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[dict[str, Any]]:
    where: list[str] = ["TRUE"]
    params: dict[str, Any] = {"n": limit}
    if account is not None:
        where.append("account_id = :a")
        params["a"] = account
    if status is not None:
        where.append("status = :s")
        params["s"] = status
    if since is not None:
        where.append("created_at >= :since")
        params["since"] = since
    if after is not None:
        where.append("(created_at, id) > (:ac, :aid)")
        params["ac"], params["aid"] = after
    rows = await session.execute(
        text(
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE {' AND '.join(where)} "
            "ORDER BY created_at, id LIMIT :n"
        ),
        params,
    )
    return [dict(r) for r in rows.mappings()]


async def latest_notifications(
    session: AsyncSession, *, account: str | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` notifications, oldest of them first (for the CLI)."""
    rows = await session.execute(
        text(
            f"SELECT * FROM (SELECT {NOTIFICATION_COLUMNS} FROM notifications "
            "WHERE (CAST(:a AS text) IS NULL OR account_id = :a) "
            "AND (CAST(:s AS text) IS NULL OR status = :s) "
            "ORDER BY created_at DESC, id DESC LIMIT :n) x ORDER BY created_at, id"
        ),
        {"a": account, "s": status, "n": limit},
    )
    return [dict(r) for r in rows.mappings()]


async def get_notification(session: AsyncSession, nid: uuid.UUID) -> dict[str, Any] | None:
    row = (
        (
            await session.execute(
                text(
                    f"SELECT {NOTIFICATION_COLUMNS}, sent_event_id, coalesce(payload, "
                    "(SELECT data FROM events WHERE id = coalesce(n.sent_event_id, "
                    "n.latest_event_id))) AS payload FROM notifications n WHERE id = :id"
                ),
                {"id": nid},
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    out = dict(row)
    attempts = await session.execute(
        text(
            "SELECT attempt, channel, attempted_at, latency_ms, response_code, response, error, "
            "outcome FROM delivery_attempts WHERE notification_id = :id ORDER BY attempt"
        ),
        {"id": nid},
    )
    out["attempt_log"] = [dict(a) for a in attempts.mappings()]
    return out


async def reopen(session: AsyncSession, nid: uuid.UUID, retry_for: float) -> str | None:
    """Make a failed notification due now; returns its previous status. A pending one is
    refused: it may be in flight right now, and sending it again could duplicate it."""
    row = (
        await session.execute(
            text(
                "WITH old AS (SELECT id, status FROM notifications WHERE id = :id FOR UPDATE) "
                "UPDATE notifications n SET status = 'pending', next_attempt_at = now(), "
                "retry_until = now() + make_interval(secs => :rf), updated_at = now() "
                "FROM old WHERE n.id = old.id AND old.status = 'failed' "
                "AND n.contact_id IS NOT NULL RETURNING old.status"
            ),
            {"id": nid, "rf": retry_for},
        )
    ).first()
    return str(row[0]) if row else None


def parse_time(value: str | None) -> time | None:
    return time.fromisoformat(value) if value else None
