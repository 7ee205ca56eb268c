"""Database access for compliance. Nothing here commits: the caller owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fusion_prime.compliance import models
from fusion_prime.compliance.domain import (
    GENESIS_HASH,
    AmlRules,
    audit_row_document,
    chain_hash,
)
from fusion_prime.compliance.sanctions.matcher import ListedName

# -- audit ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    hash: str


async def append_audit(
    session: AsyncSession, *, kind: str, subject: str, actor: str, payload: dict[str, Any]
) -> AuditEntry:
    """Append one row to the hash chain.

    The chain head row is locked FOR UPDATE, so concurrent appenders queue here and each
    chains onto the hash the previous one committed; seq has no gaps unless rows vanish.
    """
    head = (
        await session.execute(
            text("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1 FOR UPDATE")
        )
    ).one()
    seq = int(head.last_seq) + 1
    prev = str(head.last_hash)
    now = datetime.now(UTC)
    # the JSON round trip through jsonb must give back exactly what was hashed
    clean = json.loads(json.dumps(payload, default=str))
    digest = chain_hash(prev, audit_row_document(seq, now, kind, subject, actor, clean))
    await session.execute(
        text(
            "INSERT INTO audit_log (seq, occurred_at, kind, subject, actor, payload, "
            "prev_hash, hash) VALUES (:seq, :at, :kind, :subject, :actor, "
            "CAST(:payload AS jsonb), :prev, :hash)"
        ),
        {
            "seq": seq,
            "at": now,
            "kind": kind,
            "subject": subject,
            "actor": actor,
            "payload": json.dumps(clean),
            "prev": prev,
            "hash": digest,
        },
    )
    await session.execute(
        text("UPDATE audit_chain_head SET last_seq = :seq, last_hash = :hash WHERE id = 1"),
        {"seq": seq, "hash": digest},
    )
    return AuditEntry(seq, digest)


@dataclass(frozen=True)
class AuditBreak:
    seq: int
    reason: str


@dataclass(frozen=True)
class AuditReport:
    rows: int
    head_seq: int
    broken: AuditBreak | None


async def verify_audit_chain(conn: AsyncConnection) -> AuditReport:
    """Recompute every hash from the stored columns; report the first row that disagrees."""
    prev = GENESIS_HASH
    expected_seq = 1
    rows = 0
    result = await conn.stream(
        text(
            "SELECT seq, occurred_at, kind, subject, actor, payload, prev_hash, hash "
            "FROM audit_log ORDER BY seq"
        )
    )
    async for row in result:
        rows += 1
        if row.seq != expected_seq:
            return AuditReport(rows, 0, AuditBreak(expected_seq, f"row {expected_seq} is missing"))
        if row.prev_hash != prev:
            return AuditReport(
                rows, 0, AuditBreak(row.seq, "prev_hash does not match the previous row's hash")
            )
        doc = audit_row_document(
            row.seq, row.occurred_at, row.kind, row.subject, row.actor, row.payload
        )
        if chain_hash(prev, doc) != row.hash:
            return AuditReport(
                rows, 0, AuditBreak(row.seq, "content does not match its hash (row altered)")
            )
        prev = row.hash
        expected_seq += 1
    head = (await conn.execute(text("SELECT last_seq, last_hash FROM audit_chain_head"))).one()
    if int(head.last_seq) != expected_seq - 1 or head.last_hash != prev:
        return AuditReport(
            rows,
            int(head.last_seq),
            AuditBreak(
                expected_seq if int(head.last_seq) >= expected_seq else int(head.last_seq),
                f"chain head says seq {head.last_seq} but the log ends at {expected_seq - 1}",
            ),
        )
    return AuditReport(rows, expected_seq - 1, None)


async def audit_entries(
    session: AsyncSession, subject: str | None, limit: int, after_seq: int
) -> list[dict[str, Any]]:
    t = models.audit_log
    query = sa.select(t).where(t.c.seq > after_seq).order_by(t.c.seq).limit(limit)
    if subject is not None:
        query = query.where(t.c.subject == subject)
    rows = (await session.execute(query)).mappings().all()
    return [dict(r) for r in rows]


# -- AML rules -----------------------------------------------------------------------


async def current_rules(session: AsyncSession | AsyncConnection) -> AmlRules:
    row = (
        await session.execute(
            text("SELECT version, rules FROM aml_rule_sets ORDER BY version DESC LIMIT 1")
        )
    ).one()
    return AmlRules.from_json(int(row.version), row.rules)


async def publish_rules(
    conn: AsyncSession | AsyncConnection, rules: dict[str, Any], published_by: str, note: str
) -> AmlRules:
    """Store a new version (the previous ones stay, so old results keep their meaning)."""
    await conn.execute(text("LOCK TABLE aml_rule_sets IN EXCLUSIVE MODE"))
    version = int(
        (await conn.execute(text("SELECT coalesce(max(version), 0) + 1 FROM aml_rule_sets"))).one()[
            0
        ]
    )
    parsed = AmlRules.from_json(version, rules)
    await conn.execute(
        text(
            "INSERT INTO aml_rule_sets (version, rules, published_by, note) "
            "VALUES (:v, CAST(:rules AS jsonb), :by, :note)"
        ),
        {"v": version, "rules": json.dumps(parsed.to_json()), "by": published_by, "note": note},
    )
    return parsed


# -- sanctions -----------------------------------------------------------------------


async def sanctions_generation(session: AsyncSession) -> int:
    """Changes whenever any list file is loaded; the in-memory index is rebuilt then."""
    return int(
        (await session.execute(text("SELECT coalesce(max(id), 0) FROM sanctions_files"))).one()[0]
    )


async def listed_names(session: AsyncSession) -> list[ListedName]:
    rows = await session.execute(
        text(
            "SELECT n.entity_id, n.name, n.kind, v.list_name, e.source_id "
            "FROM sanctions_names n JOIN sanctions_entities e ON e.id = n.entity_id "
            "JOIN sanctions_list_versions v ON v.id = e.version_id "
            "WHERE v.superseded_at IS NULL ORDER BY n.id"
        )
    )
    return [ListedName(r.entity_id, r.name, r.kind, r.list_name, r.source_id) for r in rows]


async def listed_addresses(session: AsyncSession, normalised: Sequence[str]) -> list[Any]:
    if not normalised:
        return []
    rows = await session.execute(
        text(
            "SELECT a.normalised, a.address, a.currency, e.id AS entity_id, e.source_id, "
            "e.primary_name, v.list_name FROM sanctions_addresses a "
            "JOIN sanctions_entities e ON e.id = a.entity_id "
            "JOIN sanctions_list_versions v ON v.id = e.version_id "
            "WHERE v.superseded_at IS NULL AND a.normalised = ANY(:addrs) ORDER BY a.id"
        ),
        {"addrs": list(normalised)},
    )
    return list(rows)


# -- idempotency keys ----------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    request_sha256: str
    status_code: int
    response: Any


async def claim_idempotency_key(
    session: AsyncSession, endpoint: str, key: str, request_sha256: str
) -> StoredResponse | None:
    """Claim the key in this transaction, or return what the first request answered.

    A concurrent request with the same key waits on the primary key until the first one
    commits (then sees its answer) or rolls back (then claims the key itself).
    """
    claimed = (
        await session.execute(
            text(
                "INSERT INTO idempotency_keys (endpoint, key, request_sha256, status_code) "
                "VALUES (:e, :k, :h, 0) ON CONFLICT DO NOTHING RETURNING key"
            ),
            {"e": endpoint, "k": key, "h": request_sha256},
        )
    ).first()
    if claimed is not None:
        return None
    row = (
        await session.execute(
            text(
                "SELECT request_sha256, status_code, response FROM idempotency_keys "
                "WHERE endpoint = :e AND key = :k"
            ),
            {"e": endpoint, "k": key},
        )
    ).one()
    return StoredResponse(row.request_sha256, int(row.status_code), row.response)


async def store_idempotent_response(
    session: AsyncSession, endpoint: str, key: str, status_code: int, response: Any
) -> None:
    await session.execute(
        text(
            "UPDATE idempotency_keys SET status_code = :s, response = CAST(:r AS jsonb) "
            "WHERE endpoint = :e AND key = :k"
        ),
        {"s": status_code, "r": json.dumps(response, default=str), "e": endpoint, "k": key},
    )
