"""Compliance use cases. Each decision is stored, audited (hash chain) and published
(outbox) in the caller's one transaction, so either all three happen or none does."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.compliance import models, repository
from fusion_prime.compliance.domain import (
    KYC_TRANSITIONS,
    PROVIDER_EVENTS,
    AmlResult,
    AmlRules,
    KycStatus,
    PastTransaction,
    RiskLevel,
    can_transition,
    evaluate_aml,
    provider_path,
)
from fusion_prime.compliance.sanctions.matcher import NameIndex
from fusion_prime.compliance.sanctions.normalise import normalise_address
from fusion_prime.platform.bus.outbox import publish
from fusion_prime.platform.errors import ConflictError, InvalidError, NotFoundError
from fusion_prime.platform.observability import get_logger

SERVICE = "compliance"
TOPIC = "compliance.decisions.v1"
log = get_logger(__name__)

KYC_TRANSITIONS_TOTAL = Counter(
    "fp_compliance_kyc_transitions_total", "KYC status changes", ["service", "to_status"]
)
AML_SCREENINGS_TOTAL = Counter(
    "fp_compliance_aml_screenings_total", "AML screenings by result level", ["service", "level"]
)
SANCTIONS_SCREENINGS_TOTAL = Counter(
    "fp_compliance_sanctions_screenings_total", "Sanctions screenings", ["service", "status"]
)
WEBHOOK_EVENTS_TOTAL = Counter(
    "fp_compliance_kyc_webhook_events_total", "Provider webhook events", ["service", "outcome"]
)


async def _record_decision(
    session: AsyncSession,
    kind: str,
    *,
    subject: str,
    actor: str,
    audit: dict[str, Any],
    event: dict[str, Any],
) -> None:
    """Append the decision to the audit chain and publish it, in the caller's transaction.

    The event carries the audit row's seq and hash: published copies of the chain live
    outside this database, so even a rewrite of the whole chain (by someone able to
    disable the trigger and recompute every hash) disagrees with what consumers received.
    """
    entry = await repository.append_audit(
        session, kind=kind, subject=subject, actor=actor, payload=audit
    )
    await publish(
        session,
        TOPIC,
        event_type=kind,
        subject=subject,
        data=event | {"audit": {"seq": entry.seq, "hash": entry.hash}},
        source=SERVICE,
    )


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


# -- KYC -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentRef:
    kind: str
    reference: str
    issuing_country: str | None = None
    sha256: str | None = None
    mime_type: str | None = None


async def _kyc_case(session: AsyncSession, case_id: uuid.UUID, *, lock: bool) -> Any:
    row = (
        await session.execute(
            text(
                "SELECT id, user_id, status, provider, provider_inquiry_id, created_at, updated_at "
                "FROM kyc_cases WHERE id = :id" + (" FOR UPDATE" if lock else "")
            ),
            {"id": case_id},
        )
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"KYC case {case_id} does not exist")
    return row


async def _record_kyc_change(
    session: AsyncSession,
    case_id: uuid.UUID,
    user_id: str,
    old: KycStatus | None,
    new: KycStatus,
    actor: str,
    reason: str,
    source: str,
) -> None:
    await session.execute(
        text(
            "INSERT INTO kyc_status_history (case_id, from_status, to_status, actor, reason, "
            "source) VALUES (:c, :f, :t, :a, :r, :s)"
        ),
        {"c": case_id, "f": old, "t": new, "a": actor, "r": reason, "s": source},
    )
    data = {
        "case_id": str(case_id),
        "user_id": user_id,
        "from_status": old,
        "to_status": new,
        "actor": actor,
        "reason": reason,
        "source": source,
    }
    await _record_decision(
        session, "kyc.status_changed", subject=user_id, actor=actor, audit=data, event=data
    )
    KYC_TRANSITIONS_TOTAL.labels(SERVICE, new.value).inc()


async def create_kyc_case(
    session: AsyncSession,
    *,
    user_id: str,
    documents: Sequence[DocumentRef],
    actor: str,
    provider: str | None,
    provider_inquiry_id: str | None,
) -> dict[str, Any]:
    if provider_inquiry_id is not None:
        taken = (
            await session.execute(
                text("SELECT id FROM kyc_cases WHERE provider_inquiry_id = :i"),
                {"i": provider_inquiry_id},
            )
        ).first()
        if taken is not None:
            raise ConflictError(
                f"provider inquiry {provider_inquiry_id} already belongs to case {taken.id}"
            )
    # one user's case openings are serialised, so "one open case per user" holds
    await _advisory_lock(session, f"kyc:{user_id}")
    open_case = (
        await session.execute(
            text(
                "SELECT id, status FROM kyc_cases WHERE user_id = :u "
                "AND status NOT IN ('verified', 'rejected')"
            ),
            {"u": user_id},
        )
    ).first()
    if open_case is not None:
        raise ConflictError(
            f"user {user_id} already has an open KYC case {open_case.id} ({open_case.status})",
            case_id=str(open_case.id),
        )
    case_id = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO kyc_cases (id, user_id, status, provider, provider_inquiry_id) "
            "VALUES (:id, :u, 'pending', :p, :i)"
        ),
        {"id": case_id, "u": user_id, "p": provider, "i": provider_inquiry_id},
    )
    if documents:
        await session.execute(
            text(
                "INSERT INTO kyc_documents (case_id, kind, issuing_country, reference, sha256, "
                "mime_type) VALUES (:c, :k, :ic, :r, :s, :m)"
            ),
            [
                {
                    "c": case_id,
                    "k": doc.kind,
                    "ic": doc.issuing_country,
                    "r": doc.reference,
                    "s": doc.sha256,
                    "m": doc.mime_type,
                }
                for doc in documents
            ],
        )
    await _record_kyc_change(
        session, case_id, user_id, None, KycStatus.PENDING, actor, "case opened", "api"
    )
    return await get_kyc_case(session, case_id)


async def get_kyc_case(session: AsyncSession, case_id: uuid.UUID) -> dict[str, Any]:
    row = await _kyc_case(session, case_id, lock=False)
    docs = await session.execute(
        text(
            "SELECT kind, issuing_country, reference, sha256, mime_type FROM kyc_documents "
            "WHERE case_id = :c ORDER BY id"
        ),
        {"c": case_id},
    )
    history = await session.execute(
        text(
            "SELECT from_status, to_status, actor, reason, source, at FROM kyc_status_history "
            "WHERE case_id = :c ORDER BY id"
        ),
        {"c": case_id},
    )
    return {
        "id": str(row.id),
        "user_id": row.user_id,
        "status": row.status,
        "provider": row.provider,
        "provider_inquiry_id": row.provider_inquiry_id,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "documents": [dict(d._mapping) for d in docs],
        "history": [{**dict(h._mapping), "at": _iso(h.at)} for h in history],
    }


async def transition_kyc(
    session: AsyncSession,
    case_id: uuid.UUID,
    target: KycStatus,
    *,
    actor: str,
    reason: str,
    source: str = "api",
) -> dict[str, Any]:
    row = await _kyc_case(session, case_id, lock=True)
    current = KycStatus(row.status)
    if not can_transition(current, target):
        raise ConflictError(
            f"KYC case {case_id} cannot go from {current} to {target}",
            current_status=current.value,
            allowed=sorted(s.value for s in KYC_TRANSITIONS[current]),
        )
    await _apply_kyc(session, row, current, target, actor, reason, source)
    return await get_kyc_case(session, case_id)


async def _apply_kyc(
    session: AsyncSession,
    row: Any,
    current: KycStatus,
    target: KycStatus,
    actor: str,
    reason: str,
    source: str,
) -> None:
    await session.execute(
        text("UPDATE kyc_cases SET status = :s, updated_at = now() WHERE id = :id"),
        {"s": target, "id": row.id},
    )
    await _record_kyc_change(session, row.id, row.user_id, current, target, actor, reason, source)


@dataclass(frozen=True)
class ProviderEvent:
    event_id: str
    name: str
    inquiry_id: str
    reference_id: str | None
    signed_at: datetime


async def handle_provider_event(
    session: AsyncSession, event: ProviderEvent, payload: dict[str, Any]
) -> dict[str, Any]:
    """Apply one authenticated provider event exactly once (keyed by the event id)."""
    claimed = (
        await session.execute(
            text(
                "INSERT INTO kyc_webhook_events (event_id, event_name, inquiry_id, outcome, "
                "signed_at, payload) VALUES (:id, :n, :i, 'received', :t, CAST(:p AS jsonb)) "
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
            ),
            {
                "id": event.event_id,
                "n": event.name,
                "i": event.inquiry_id,
                "t": event.signed_at,
                "p": json.dumps(payload),
            },
        )
    ).first()
    if claimed is None:
        WEBHOOK_EVENTS_TOTAL.labels(SERVICE, "duplicate").inc()
        prior = (
            await session.execute(
                text("SELECT outcome, case_id FROM kyc_webhook_events WHERE event_id = :id"),
                {"id": event.event_id},
            )
        ).one()
        return {
            "event_id": event.event_id,
            "outcome": "duplicate",
            "first_outcome": prior.outcome,
            "case_id": str(prior.case_id) if prior.case_id else None,
        }
    case_id, outcome = await _apply_provider_event(session, event)
    if case_id is None and outcome.startswith("unmatched"):
        # Not consumed: an event that overtook the one binding its inquiry to a case (an
        # approval before the completion that names the user) was stored as handled, so
        # the provider's retry was a "duplicate" and the approval was lost for good. The
        # 409 rolls the claim back and makes the provider deliver it again.
        WEBHOOK_EVENTS_TOTAL.labels(SERVICE, "unmatched").inc()
        raise ConflictError(
            f"no KYC case is bound to inquiry {event.inquiry_id} yet; deliver the event again",
            event_id=event.event_id,
        )
    await session.execute(
        text("UPDATE kyc_webhook_events SET outcome = :o, case_id = :c WHERE event_id = :id"),
        {"o": outcome, "c": case_id, "id": event.event_id},
    )
    WEBHOOK_EVENTS_TOTAL.labels(SERVICE, outcome.split(":")[0]).inc()
    return {
        "event_id": event.event_id,
        "outcome": outcome,
        "case_id": str(case_id) if case_id else None,
    }


async def _apply_provider_event(
    session: AsyncSession, event: ProviderEvent
) -> tuple[uuid.UUID | None, str]:
    target = PROVIDER_EVENTS.get(event.name)
    if target is None:
        return None, f"ignored: event {event.name} does not change a case"
    row = (
        await session.execute(
            text("SELECT id FROM kyc_cases WHERE provider_inquiry_id = :i FOR UPDATE"),
            {"i": event.inquiry_id},
        )
    ).one_or_none()
    if row is None and event.reference_id:
        # first event of an inquiry: bind it to the user's latest open case
        row = (
            await session.execute(
                text(
                    "SELECT id FROM kyc_cases WHERE user_id = :u AND provider_inquiry_id IS NULL "
                    "AND status NOT IN ('verified', 'rejected') "
                    "ORDER BY created_at DESC LIMIT 1 FOR UPDATE"
                ),
                {"u": event.reference_id},
            )
        ).one_or_none()
        if row is not None:
            await session.execute(
                text(
                    "UPDATE kyc_cases SET provider_inquiry_id = :i, provider = 'persona' "
                    "WHERE id = :id"
                ),
                {"i": event.inquiry_id, "id": row.id},
            )
    if row is None:
        return None, "unmatched: no KYC case for this inquiry"
    case = await _kyc_case(session, row.id, lock=True)
    current = KycStatus(case.status)
    path = provider_path(current, target)
    if path is None:
        return case.id, f"ignored: case is {current}, cannot become {target}"
    if not path:
        return case.id, f"unchanged: case already {current}"
    for step in path:
        await _apply_kyc(
            session,
            case,
            current,
            step,
            "provider:persona",
            f"{event.name} (event {event.event_id}, inquiry {event.inquiry_id})",
            "webhook",
        )
        current = step
    return case.id, f"applied: {target}"


# -- sanctions -----------------------------------------------------------------------


class SanctionsIndexCache:
    """The name index of one process, rebuilt when a list load bumps the generation."""

    def __init__(self) -> None:
        self._index: NameIndex | None = None
        self._lock = asyncio.Lock()

    async def get(self, session: AsyncSession) -> NameIndex:
        generation = await repository.sanctions_generation(session)
        if self._index is not None and self._index.generation == generation:
            return self._index
        async with self._lock:
            if self._index is None or self._index.generation != generation:
                names = await repository.listed_names(session)
                self._index = await asyncio.to_thread(NameIndex, names, generation)
                log.info("sanctions index built", names=len(names), generation=generation)
            return self._index


@dataclass(frozen=True)
class Candidate:
    query: str
    query_type: str
    list_name: str
    entity_id: int
    source_id: str
    matched: str
    match_kind: str
    score: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "query_type": self.query_type,
            "list": self.list_name,
            "entity_id": self.entity_id,
            "source_id": self.source_id,
            "matched": self.matched,
            "match_kind": self.match_kind,
            "score": self.score,
            "reason": self.reason,
        }


async def find_candidates(
    session: AsyncSession,
    cache: SanctionsIndexCache,
    names: Sequence[str],
    addresses: Sequence[str],
    threshold: float,
) -> list[Candidate]:
    out: list[Candidate] = []
    if names:
        index = await cache.get(session)
        for name in names:
            for m in index.search(name, threshold):
                score = round(m.score, 4)
                out.append(
                    Candidate(
                        name,
                        "name",
                        m.entry.list_name,
                        m.entry.entity_id,
                        m.entry.source_id,
                        m.entry.name,
                        m.entry.kind,
                        score,
                        f"name {name!r} resembles {m.entry.kind} name {m.entry.name!r} of "
                        f"{m.entry.list_name} entry {m.entry.source_id} (name score {score:.4f}"
                        f" >= {threshold})",
                    )
                )
    if addresses:
        wanted = {normalise_address(a): a for a in addresses}
        for r in await repository.listed_addresses(session, list(wanted)):
            query = wanted[r.normalised]
            out.append(
                Candidate(
                    query,
                    "address",
                    r.list_name,
                    int(r.entity_id),
                    r.source_id,
                    r.address,
                    f"{r.currency} address",
                    1.0,
                    f"address {query} is listed as a {r.currency} address of {r.list_name} "
                    f"entry {r.source_id} ({r.primary_name or 'unnamed'})",
                )
            )
    return out


async def _open_case(
    session: AsyncSession, kind: str, user_id: str | None, level: RiskLevel, summary: str
) -> uuid.UUID:
    case_id = uuid.uuid4()
    await session.execute(
        text("INSERT INTO cases (id, kind, user_id, level, summary) VALUES (:id, :k, :u, :l, :s)"),
        {"id": case_id, "k": kind, "u": user_id, "l": level, "s": summary},
    )
    return case_id


async def screen_sanctions(
    session: AsyncSession,
    cache: SanctionsIndexCache,
    *,
    names: Sequence[str],
    addresses: Sequence[str],
    user_id: str | None,
    threshold: float,
    actor: str,
    reuse_open_case: bool = False,
) -> dict[str, Any]:
    candidates = await find_candidates(session, cache, names, addresses, threshold)
    status = "hit" if candidates else "clear"
    screening_id = uuid.uuid4()
    case_id: uuid.UUID | None = None
    if candidates and reuse_open_case and user_id is not None:
        open_case = (
            await session.execute(
                text(
                    "SELECT id FROM cases WHERE user_id = :u AND kind = 'sanctions' "
                    "AND status <> 'resolved' ORDER BY created_at DESC LIMIT 1"
                ),
                {"u": user_id},
            )
        ).one_or_none()
        case_id = open_case.id if open_case else None
    if candidates and case_id is None:
        best = max(candidates, key=lambda c: c.score)
        case_id = await _open_case(
            session,
            "sanctions",
            user_id,
            RiskLevel.HIGH,
            f"{len(candidates)} sanctions candidate(s); best: {best.reason}",
        )
    body = [c.to_json() for c in candidates]
    await session.execute(
        text(
            "INSERT INTO sanctions_screenings (id, user_id, names, addresses, threshold, status, "
            "candidates, case_id) VALUES (:id, :u, CAST(:n AS jsonb), CAST(:a AS jsonb), :t, "
            ":s, CAST(:c AS jsonb), :case)"
        ),
        {
            "id": screening_id,
            "u": user_id,
            "n": json.dumps(list(names)),
            "a": json.dumps(list(addresses)),
            "t": Decimal(str(threshold)),
            "s": status,
            "c": json.dumps(body),
            "case": case_id,
        },
    )
    result = {
        "screening_id": str(screening_id),
        "user_id": user_id,
        "status": status,
        "threshold": threshold,
        "candidates": body,
        "case_id": str(case_id) if case_id else None,
    }
    subject = user_id or f"screening:{screening_id}"
    await _record_decision(
        session,
        "sanctions.screened",
        subject=subject,
        actor=actor,
        audit={**result, "names": list(names), "addresses": list(addresses)},
        event=result | {"candidates": len(candidates)},
    )
    SANCTIONS_SCREENINGS_TOTAL.labels(SERVICE, status).inc()
    return result


@dataclass(frozen=True)
class RescreenResult:
    users: int
    hits: int


async def rescreen_users(session: AsyncSession, *, threshold: float, actor: str) -> RescreenResult:
    """Screen every screened user again, on their latest names and addresses, against the
    lists as they are now (called in the transaction that loaded a list version).

    A user screened clear yesterday may be on today's list; waiting for their next
    transaction would leave them unflagged until then. A hit opens a sanctions case
    unless the user already has an open one (the new screening is linked to it).
    """
    latest = list(
        await session.execute(
            text(
                "SELECT DISTINCT ON (user_id) user_id, names, addresses FROM sanctions_screenings "
                "WHERE user_id IS NOT NULL ORDER BY user_id, created_at DESC, id"
            )
        )
    )
    cache = SanctionsIndexCache()
    hits = 0
    for row in latest:
        result = await screen_sanctions(
            session,
            cache,
            names=list(row.names),
            addresses=list(row.addresses),
            user_id=row.user_id,
            threshold=threshold,
            actor=actor,
            reuse_open_case=True,
        )
        hits += result["status"] == "hit"
    return RescreenResult(len(latest), hits)


async def list_versions(session: AsyncSession) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT v.id, v.list_name, v.version_date, v.created_at, v.superseded_at, "
            "(SELECT count(*) FROM sanctions_entities e WHERE e.version_id = v.id) AS entities, "
            "coalesce((SELECT jsonb_agg(jsonb_build_object('format', f.format, 'file', "
            "f.file_name, 'sha256', f.sha256, 'records', f.records) ORDER BY f.id) "
            "FROM sanctions_files f WHERE f.version_id = v.id), '[]') AS files "
            "FROM sanctions_list_versions v ORDER BY v.list_name, v.id DESC"
        )
    )
    return [
        {
            "id": r.id,
            "list": r.list_name,
            "version_date": r.version_date.isoformat(),
            "current": r.superseded_at is None,
            "loaded_at": _iso(r.created_at),
            "superseded_at": _iso(r.superseded_at),
            "entities": int(r.entities),
            "files": r.files,
        }
        for r in rows
    ]


# -- AML -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TransactionIn:
    user_id: str
    external_id: str | None
    amount: Decimal
    currency: str
    tx_type: str
    counterparties: Sequence[str]
    addresses: Sequence[str]
    occurred_at: datetime


def _aml_response(row: Any, alert_id: Any, case_id: Any, replay: bool) -> dict[str, Any]:
    return {
        "transaction_id": str(row.id),
        "external_id": row.external_id,
        "user_id": row.user_id,
        "amount": str(row.amount),
        "currency": row.currency,
        "score": row.score,
        "level": row.level,
        "rules_version": row.rules_version,
        "business_day": row.business_day.isoformat(),
        "fired_rules": row.fired,
        "alert_id": str(alert_id) if alert_id else None,
        "case_id": str(case_id) if case_id else None,
        "replayed": replay,
    }


async def _advisory_lock(session: AsyncSession, key: str) -> None:
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})


_TX_COLUMNS = (
    "t.id, t.external_id, t.user_id, t.amount, t.currency, t.score, t.level, "
    "t.rules_version, t.business_day, t.fired, a.id AS alert_id, a.case_id"
)


async def screen_transaction(
    session: AsyncSession, cache: SanctionsIndexCache, tx: TransactionIn, threshold: float
) -> dict[str, Any]:
    if tx.currency != "USD":
        raise InvalidError(
            f"currency {tx.currency} is not supported: thresholds are in USD and no "
            "conversion rates are kept; convert before screening",
            field="currency",
        )
    # The caller's transaction id is locked first: the per-user lock alone let two users
    # with one id both pass the replay check, and the second insert hit the unique index
    # (a 500). Always this order (id, then user), so two screenings cannot deadlock.
    if tx.external_id is not None:
        await _advisory_lock(session, f"aml-tx:{tx.external_id}")
    # one user's screenings are serialised so aggregates never miss a concurrent sibling
    await _advisory_lock(session, f"aml:{tx.user_id}")
    if tx.external_id is not None:
        prior = (
            await session.execute(
                text(
                    f"SELECT {_TX_COLUMNS} FROM aml_transactions t "
                    "LEFT JOIN aml_alerts a ON a.transaction_id = t.id WHERE t.external_id = :e"
                ),
                {"e": tx.external_id},
            )
        ).one_or_none()
        if prior is not None:
            if prior.user_id != tx.user_id or prior.amount != tx.amount:
                raise ConflictError(
                    f"transaction {tx.external_id} was already screened with other details "
                    "(another user or amount); a retry must repeat the first request"
                )
            return _aml_response(prior, prior.alert_id, prior.case_id, True)
    rules = await repository.current_rules(session)
    reported_at = datetime.now(UTC)
    history = [
        PastTransaction(r.amount, r.occurred_at)
        for r in await session.execute(
            text(
                "SELECT amount, occurred_at FROM aml_transactions WHERE user_id = :u "
                "AND occurred_at >= :since AND occurred_at <= :until"
            ),
            {
                "u": tx.user_id,
                "since": _lookback_start(rules, tx.occurred_at),
                "until": tx.occurred_at,
            },
        )
    ]
    hits = await find_candidates(session, cache, tx.counterparties, tx.addresses, threshold)
    result = evaluate_aml(
        rules, tx.amount, tx.occurred_at, history, [c.reason for c in hits], reported_at
    )
    fired = [f.to_json() for f in result.fired]
    tx_id = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO aml_transactions (id, external_id, user_id, amount, currency, tx_type, "
            "counterparties, addresses, occurred_at, business_day, rules_version, score, level, "
            "fired, screened_at) VALUES (:id, :e, :u, :amt, :cur, :ty, CAST(:cp AS jsonb), "
            "CAST(:ad AS jsonb), :at, :day, :rv, :score, :level, CAST(:fired AS jsonb), :now)"
        ),
        {
            "id": tx_id,
            "e": tx.external_id,
            "u": tx.user_id,
            "amt": tx.amount,
            "cur": tx.currency,
            "ty": tx.tx_type,
            "cp": json.dumps(list(tx.counterparties)),
            "ad": json.dumps(list(tx.addresses)),
            "at": tx.occurred_at,
            "day": result.business_day,
            "rv": rules.version,
            "score": result.score,
            "level": result.level,
            "fired": json.dumps(fired),
            "now": reported_at,
        },
    )
    alert_id, case_id = await _raise_alert(session, tx_id, tx.user_id, result, fired)
    response = await _recorded_screening(session, tx_id, alert_id, case_id, tx.tx_type)
    await _rescore_later(session, rules, tx.user_id, tx_id, tx.occurred_at)
    AML_SCREENINGS_TOTAL.labels(SERVICE, result.level.value).inc()
    return response


def _lookback_start(rules: AmlRules, at: datetime) -> datetime:
    """The earliest time any rule looks at for a transaction at `at` (its business day
    start, or the longest window)."""
    zone = ZoneInfo(rules.business_timezone)
    day_start = datetime.combine(rules.business_day(at), time(0), tzinfo=zone)
    return min(day_start, at - rules.lookback)


def _rule_names(fired: Sequence[dict[str, Any]]) -> set[str]:
    return {str(f["rule"]) for f in fired}


async def _raise_alert(
    session: AsyncSession,
    tx_id: uuid.UUID,
    user_id: str,
    result: AmlResult,
    fired: Sequence[dict[str, Any]],
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """Open (or, on a re-score, raise) the alert and case of a medium/high result."""
    if result.level not in (RiskLevel.MEDIUM, RiskLevel.HIGH):
        return None, None
    summary = f"AML {result.level} (score {result.score}): " + ", ".join(
        str(f["rule"]) for f in fired
    )
    prior = (
        await session.execute(
            text(
                "SELECT a.id, a.case_id, c.status AS case_status FROM aml_alerts a "
                "JOIN cases c ON c.id = a.case_id WHERE a.transaction_id = :t FOR UPDATE OF a"
            ),
            {"t": tx_id},
        )
    ).one_or_none()
    if prior is not None and prior.case_status != "resolved":
        await session.execute(
            text("UPDATE cases SET level = :l, summary = :s, updated_at = now() WHERE id = :id"),
            {"l": result.level, "s": summary, "id": prior.case_id},
        )
        await session.execute(
            text("UPDATE aml_alerts SET level = :l, score = :s WHERE id = :id"),
            {"l": result.level, "s": result.score, "id": prior.id},
        )
        return prior.id, prior.case_id
    # new alert, or the earlier case was already resolved: the raised score is new
    # information, so it gets a case of its own
    case_id = await _open_case(session, "aml", user_id, result.level, summary)
    if prior is not None:
        await session.execute(
            text(
                "UPDATE aml_alerts SET level = :l, score = :s, case_id = :c, status = 'open' "
                "WHERE id = :id"
            ),
            {"l": result.level, "s": result.score, "c": case_id, "id": prior.id},
        )
        return prior.id, case_id
    alert_id = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO aml_alerts (id, transaction_id, user_id, level, score, case_id) "
            "VALUES (:id, :t, :u, :l, :s, :c)"
        ),
        {"id": alert_id, "t": tx_id, "u": user_id, "l": result.level, "s": result.score,
         "c": case_id},
    )  # fmt: skip
    return alert_id, case_id


async def _recorded_screening(
    session: AsyncSession,
    tx_id: uuid.UUID,
    alert_id: uuid.UUID | None,
    case_id: uuid.UUID | None,
    tx_type: str,
    rescored_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read the stored row back, then audit and publish it as `aml.screened`."""
    row = (
        await session.execute(
            text(
                f"SELECT {_TX_COLUMNS}, t.occurred_at FROM aml_transactions t "
                "LEFT JOIN aml_alerts a ON a.transaction_id = t.id WHERE t.id = :id"
            ),
            {"id": tx_id},
        )
    ).one()
    response = _aml_response(row, alert_id, case_id, False)
    extra: dict[str, Any] = {}
    if rescored_from is not None:
        extra = {"rescored": True, "previous": rescored_from}
    await _record_decision(
        session,
        "aml.screened",
        subject=row.user_id,
        actor="aml-engine",
        audit={**response, "occurred_at": _iso(row.occurred_at), "tx_type": tx_type, **extra},
        event={k: response[k] for k in ("transaction_id", "score", "level", "rules_version")}
        | {"rules": [f["rule"] for f in row.fired], "case_id": response["case_id"], **extra},
    )
    return response


_SANCTIONS_PREFIX = "counterparty on a sanctions list: "


async def _rescore_later(
    session: AsyncSession, rules: AmlRules, user_id: str, new_id: uuid.UUID, at: datetime
) -> None:
    """Re-score the user's stored transactions that a new one at `at` precedes.

    Every rule only looks back from a transaction, so one that arrives late (occurred
    before already-stored ones) changes what those later ones should have scored. Adding
    a transaction to a history can only fire more rules, so scores only rise; after
    re-scoring, every stored transaction has the result it would have had in time order,
    whatever the order of submission. Only a changed score or rule set is a decision
    (audited and published as `aml.screened` with `rescored: true`).
    """
    zone = ZoneInfo(rules.business_timezone)
    day_end = datetime.combine(rules.business_day(at) + timedelta(days=1), time(0), tzinfo=zone)
    until = max(at + rules.lookback, day_end)
    rows = list(
        await session.execute(
            text(
                "SELECT id, amount, occurred_at, screened_at, tx_type, score, level, fired "
                "FROM aml_transactions WHERE user_id = :u AND occurred_at >= :since "
                "AND occurred_at <= :until ORDER BY occurred_at, id"
            ),
            {"u": user_id, "since": _lookback_start(rules, at), "until": until},
        )
    )
    for row in rows:
        if row.id == new_id or row.occurred_at < at:
            continue
        if row.occurred_at >= at + rules.lookback and rules.business_day(
            row.occurred_at
        ) != rules.business_day(at):
            continue  # beyond every window of the new transaction
        history = [
            PastTransaction(o.amount, o.occurred_at)
            for o in rows
            if o.id != row.id and o.occurred_at <= row.occurred_at
        ]
        sanctions = [
            str(f["explanation"]).removeprefix(_SANCTIONS_PREFIX)
            for f in row.fired
            if f["rule"] == "sanctions"
        ]
        result = evaluate_aml(
            rules, row.amount, row.occurred_at, history, sanctions, row.screened_at
        )
        fired = [f.to_json() for f in result.fired]
        before, after = _rule_names(row.fired), _rule_names(fired)
        if result.score == row.score and after == before:
            continue
        if result.score < row.score or not before <= after:
            continue  # a newer rules version may weigh less: never lower a stored result
        await session.execute(
            text(
                "UPDATE aml_transactions SET score = :s, level = :l, fired = CAST(:f AS jsonb), "
                "rules_version = :rv, rescored_at = now() WHERE id = :id"
            ),
            {"s": result.score, "l": result.level, "f": json.dumps(fired), "rv": rules.version,
             "id": row.id},
        )  # fmt: skip
        alert_id, case_id = await _raise_alert(session, row.id, user_id, result, fired)
        await _recorded_screening(
            session,
            row.id,
            alert_id,
            case_id,
            row.tx_type,
            rescored_from={"score": row.score, "level": row.level, "rules": sorted(before)},
        )
        AML_SCREENINGS_TOTAL.labels(SERVICE, result.level.value).inc()


# -- cases ---------------------------------------------------------------------------


def _case_json(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    for key in ("resolved_at", "created_at", "updated_at"):
        data[key] = _iso(data[key])
    data["id"] = str(data["id"])
    return data


async def list_cases(
    session: AsyncSession,
    *,
    status: str | None,
    kind: str | None,
    user_id: str | None,
    assignee: str | None,
    level: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    t = models.cases
    query = sa.select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit).offset(offset)
    for column, value in (
        (t.c.status, status),
        (t.c.kind, kind),
        (t.c.user_id, user_id),
        (t.c.assignee, assignee),
        (t.c.level, level),
    ):
        if value is not None:
            query = query.where(column == value)
    return [_case_json(r) for r in await session.execute(query)]


async def _case(session: AsyncSession, case_id: uuid.UUID, *, lock: bool) -> Any:
    row = (
        await session.execute(
            text("SELECT * FROM cases WHERE id = :id" + (" FOR UPDATE" if lock else "")),
            {"id": case_id},
        )
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"case {case_id} does not exist")
    return row


async def get_case(session: AsyncSession, case_id: uuid.UUID) -> dict[str, Any]:
    return _case_json(await _case(session, case_id, lock=False))


async def assign_case(
    session: AsyncSession, case_id: uuid.UUID, *, assignee: str, actor: str
) -> dict[str, Any]:
    row = await _case(session, case_id, lock=True)
    if row.status == "resolved":
        raise ConflictError(f"case {case_id} is resolved and cannot be reassigned")
    await session.execute(
        text(
            "UPDATE cases SET assignee = :a, status = 'assigned', updated_at = now() WHERE id = :id"
        ),
        {"a": assignee, "id": case_id},
    )
    await repository.append_audit(
        session,
        kind="case.assigned",
        subject=row.user_id or f"case:{case_id}",
        actor=actor,
        payload={"case_id": str(case_id), "assignee": assignee, "previous": row.assignee},
    )
    return await get_case(session, case_id)


async def resolve_case(
    session: AsyncSession, case_id: uuid.UUID, *, resolution: str, reason: str, actor: str
) -> dict[str, Any]:
    row = await _case(session, case_id, lock=True)
    if row.status == "resolved":
        raise ConflictError(f"case {case_id} is already resolved ({row.resolution})")
    await session.execute(
        text(
            "UPDATE cases SET status = 'resolved', resolution = :r, resolution_reason = :why, "
            "resolved_by = :by, resolved_at = now(), updated_at = now() WHERE id = :id"
        ),
        {"r": resolution, "why": reason, "by": actor, "id": case_id},
    )
    await session.execute(
        text("UPDATE aml_alerts SET status = 'closed' WHERE case_id = :id"), {"id": case_id}
    )
    subject = row.user_id or f"case:{case_id}"
    data = {
        "case_id": str(case_id),
        "kind": row.kind,
        "user_id": row.user_id,
        "resolution": resolution,
        "reason": reason,
        "resolved_by": actor,
    }
    await _record_decision(
        session, "case.resolved", subject=subject, actor=actor, audit=data, event=data
    )
    return await get_case(session, case_id)


# -- per-user status -----------------------------------------------------------------


async def compliance_status(session: AsyncSession, user_id: str) -> dict[str, Any]:
    """Derived on every call from the stored KYC cases, alerts, cases and screenings."""
    kyc = (
        await session.execute(
            text(
                "SELECT id, status, updated_at FROM kyc_cases WHERE user_id = :u "
                "ORDER BY created_at DESC, id LIMIT 1"
            ),
            {"u": user_id},
        )
    ).one_or_none()
    open_alerts = int(
        (
            await session.execute(
                text("SELECT count(*) FROM aml_alerts WHERE user_id = :u AND status = 'open'"),
                {"u": user_id},
            )
        ).one()[0]
    )
    case_counts = {
        r.kind: int(r.n)
        for r in await session.execute(
            text(
                "SELECT kind, count(*) AS n FROM cases WHERE user_id = :u "
                "AND status <> 'resolved' GROUP BY kind"
            ),
            {"u": user_id},
        )
    }
    confirmed = int(
        (
            await session.execute(
                text(
                    "SELECT count(*) FROM cases WHERE user_id = :u AND kind = 'sanctions' "
                    "AND resolution = 'confirmed'"
                ),
                {"u": user_id},
            )
        ).one()[0]
    )
    last = (
        await session.execute(
            text(
                "SELECT id, status, created_at FROM sanctions_screenings WHERE user_id = :u "
                "ORDER BY created_at DESC LIMIT 1"
            ),
            {"u": user_id},
        )
    ).one_or_none()
    if confirmed:
        sanctions_status = "confirmed_match"
    elif case_counts.get("sanctions"):
        sanctions_status = "potential_match"
    elif last is None:
        sanctions_status = "not_screened"
    else:
        sanctions_status = "clear"
    # A rejection is sticky: a new case of the same person (this user id, or another one
    # that presented a document with the same SHA-256) does not lift it.
    rejected = (
        await session.execute(
            text(
                "SELECT c.id FROM kyc_cases c WHERE c.status = 'rejected' AND (c.user_id = :u "
                "OR EXISTS (SELECT 1 FROM kyc_documents d JOIN kyc_documents mine "
                "ON mine.sha256 = d.sha256 JOIN kyc_cases mc ON mc.id = mine.case_id "
                "WHERE d.case_id = c.id AND mc.user_id = :u)) "
                "ORDER BY c.updated_at DESC LIMIT 1"
            ),
            {"u": user_id},
        )
    ).one_or_none()
    kyc_status = kyc.status if kyc else None
    open_cases = sum(case_counts.values())
    if rejected is not None or confirmed:
        overall = "blocked"
    elif open_cases or open_alerts:
        overall = "review"
    elif kyc_status == "verified" and sanctions_status == "clear":
        overall = "clear"
    else:
        overall = "incomplete"
    return {
        "user_id": user_id,
        "overall": overall,
        "kyc": {
            "status": kyc_status,
            "case_id": str(kyc.id) if kyc else None,
            "updated_at": _iso(kyc.updated_at) if kyc else None,
            "rejected_case_id": str(rejected.id) if rejected else None,
        },
        "open_alerts": open_alerts,
        "open_cases": {
            "aml": case_counts.get("aml", 0),
            "sanctions": case_counts.get("sanctions", 0),
        },
        "sanctions": {
            "status": sanctions_status,
            "last_screened_at": _iso(last.created_at) if last else None,
            "last_screening_id": str(last.id) if last else None,
        },
    }


# -- read views for the operator console -----------------------------------------------


async def list_kyc_cases(
    session: AsyncSession, *, status: str | None, user_id: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """KYC cases, newest first, each with its latest decision (status change and actor)."""
    rows = await session.execute(
        text(
            "SELECT c.id, c.user_id, c.status, c.provider, c.created_at, c.updated_at, "
            "h.actor AS last_actor, h.reason AS last_reason, h.source AS last_source, "
            "h.at AS last_at FROM kyc_cases c "
            "LEFT JOIN LATERAL (SELECT actor, reason, source, at FROM kyc_status_history "
            "  WHERE case_id = c.id ORDER BY id DESC LIMIT 1) h ON true "
            "WHERE (CAST(:status AS text) IS NULL OR c.status = :status) "
            "AND (CAST(:user_id AS text) IS NULL OR c.user_id = :user_id) "
            "ORDER BY c.created_at DESC, c.id LIMIT :limit OFFSET :offset"
        ),
        {"status": status, "user_id": user_id, "limit": limit, "offset": offset},
    )
    return [
        {
            **dict(r._mapping),
            "id": str(r.id),
            "created_at": _iso(r.created_at),
            "updated_at": _iso(r.updated_at),
            "last_at": _iso(r.last_at),
        }
        for r in rows
    ]


async def list_screenings(
    session: AsyncSession, *, status: str | None, user_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """Sanctions screenings, newest first (status `hit` for the hits), with candidates."""
    rows = await session.execute(
        text(
            "SELECT id, user_id, names, addresses, threshold, status, candidates, case_id, "
            "created_at FROM sanctions_screenings "
            "WHERE (CAST(:status AS text) IS NULL OR status = :status) "
            "AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id) "
            "ORDER BY created_at DESC, id LIMIT :limit"
        ),
        {"status": status, "user_id": user_id, "limit": limit},
    )
    return [
        {
            **dict(r._mapping),
            "id": str(r.id),
            "case_id": str(r.case_id) if r.case_id else None,
            "threshold": str(r.threshold),
            "created_at": _iso(r.created_at),
        }
        for r in rows
    ]


async def audit_chain_status(session: AsyncSession) -> dict[str, Any]:
    """Recompute the hash chain now (as `fusion-prime compliance verify-audit` does)."""
    report = await repository.verify_audit_chain(await session.connection())
    return {
        "intact": report.broken is None,
        "rows": report.rows,
        "head_seq": report.head_seq,
        "broken": (
            {"seq": report.broken.seq, "reason": report.broken.reason} if report.broken else None
        ),
        "checked_at": datetime.now(UTC).isoformat(),
    }
