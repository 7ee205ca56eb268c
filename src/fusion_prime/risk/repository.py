"""Reads and writes of the risk database. Never commits: the caller owns the transaction.

Bulk writes (states, snapshots, margin events and their outbox rows) go through the
asyncpg connection under the session with COPY / unnest, so persisting thousands of
outcomes costs a few statements, not thousands.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.outbox import NOTIFY_SQL
from fusion_prime.platform.bus.registry import topic as lookup_topic
from fusion_prime.platform.database import driver_connection
from fusion_prime.risk import models as m
from fusion_prime.risk.domain import Position, Price, RiskParams, State, Tier, TierConfig
from fusion_prime.settlement.domain import EscrowState

MARGIN_TOPIC = "alerts.margin.v1"


# -- configuration and parameters ----------------------------------------------------


def _config(row: Any) -> TierConfig:
    return TierConfig(
        healthy=row.healthy,
        warning=row.warning,
        margin_call=row.margin_call,
        hysteresis=row.hysteresis,
        reminder_interval=timedelta(seconds=row.reminder_interval_seconds),
        snapshot_interval=timedelta(seconds=row.snapshot_interval_seconds),
        close_factor=row.close_factor,
        full_close_below=row.full_close_below,
        max_future_skew=timedelta(seconds=row.max_future_skew_seconds),
    )


async def get_config(session: AsyncSession) -> tuple[int, TierConfig]:
    row = (
        await session.execute(
            sa.select(m.risk_config).order_by(m.risk_config.c.version.desc()).limit(1)
        )
    ).one()
    return row.version, _config(row)


async def insert_config(
    session: AsyncSession, cfg: TierConfig, *, created_by: str | None = None
) -> int:
    version = await session.scalar(
        sa.insert(m.risk_config)
        .values(
            healthy=cfg.healthy,
            warning=cfg.warning,
            margin_call=cfg.margin_call,
            hysteresis=cfg.hysteresis,
            reminder_interval_seconds=int(cfg.reminder_interval.total_seconds()),
            snapshot_interval_seconds=int(cfg.snapshot_interval.total_seconds()),
            close_factor=cfg.close_factor,
            full_close_below=cfg.full_close_below,
            max_future_skew_seconds=int(cfg.max_future_skew.total_seconds()),
            created_by=created_by,
        )
        .returning(m.risk_config.c.version)
    )
    assert version is not None
    await log_book_change(session, "config")
    return int(version)


def _params(row: Any) -> RiskParams:
    return RiskParams(
        asset=row.asset,
        ltv=row.ltv,
        liquidation_threshold=row.liquidation_threshold,
        liquidation_bonus=row.liquidation_bonus,
        max_price_age=timedelta(seconds=row.max_price_age_seconds),
        version=row.version,
        decimals=row.decimals,
    )


async def current_params(session: AsyncSession) -> dict[str, RiskParams]:
    rows = await session.execute(
        text("SELECT DISTINCT ON (asset) * FROM risk_parameters ORDER BY asset, version DESC")
    )
    return {r.asset: _params(r) for r in rows}


async def param_versions(session: AsyncSession, asset: str) -> list[tuple[RiskParams, datetime]]:
    rows = await session.execute(
        sa.select(m.risk_parameters)
        .where(m.risk_parameters.c.asset == asset)
        .order_by(m.risk_parameters.c.version.desc())
    )
    return [(_params(r), r.created_at) for r in rows]


async def insert_params(
    session: AsyncSession, rp: RiskParams, *, created_by: str | None = None
) -> RiskParams:
    """A new version row; earlier versions are never modified."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('risk_parameters:' || :a))"), {"a": rp.asset}
    )
    version = await session.scalar(
        text(
            "INSERT INTO risk_parameters (asset, version, ltv, liquidation_threshold, "
            "liquidation_bonus, max_price_age_seconds, decimals, created_by) SELECT :asset, "
            "coalesce(max(version), 0) + 1, :ltv, :lt, :bonus, :age, :dec, :by "
            "FROM risk_parameters "
            "WHERE asset = :asset RETURNING version"
        ),
        {
            "asset": rp.asset,
            "ltv": rp.ltv,
            "lt": rp.liquidation_threshold,
            "bonus": rp.liquidation_bonus,
            "age": int(rp.max_price_age.total_seconds()),
            "dec": rp.decimals,
            "by": created_by,
        },
    )
    assert version is not None
    await log_book_change(session, "params")
    return replace(rp, version=int(version))


async def lock_evaluation(session: AsyncSession, *, wait: bool = True) -> bool:
    """Serialise re-evaluations across instances and consumers (transaction-scoped).

    Two passes deciding on the same account at once could both emit its tier change;
    holding this lock, a pass also sees every state the previous one committed.
    """
    fn = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    got = await session.scalar(text(f"SELECT {fn}(hashtext('risk:reevaluate'))"))
    return bool(got) if not wait else True


async def log_book_change(
    session: AsyncSession, kind: str, account_ids: Sequence[str] | None = None
) -> int:
    """Tell the books in memory (every instance's) what changed outside a price tick.

    Written while holding the evaluation lock, so sequence order is commit order and a
    book that read up to a sequence number has seen every earlier change.
    """
    await lock_evaluation(session)
    seq = await session.scalar(
        text(
            "INSERT INTO book_changes (kind, account_ids) VALUES (:k, CAST(:ids AS text[])) "
            "RETURNING seq"
        ),
        {"k": kind, "ids": list(account_ids) if account_ids is not None else None},
    )
    await notify_books(session)
    return int(seq)


BOOK_CHANNEL = "risk_book"


async def notify_books(session: AsyncSession) -> None:
    """Wake every instance's book (delivered at commit, never for a rollback)."""
    await session.execute(text("SELECT pg_notify(:c, '')"), {"c": BOOK_CHANNEL})


async def prune_book_changes(session: AsyncSession, older_than: timedelta) -> int:
    """A book reads the log only forward from its load; old rows serve no one."""
    result = await session.execute(
        text("DELETE FROM book_changes WHERE created_at < now() - make_interval(secs => :s)"),
        {"s": older_than.total_seconds()},
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- prices ---------------------------------------------------------------------------


async def all_prices(session: AsyncSession) -> dict[str, Price]:
    rows = await session.execute(sa.select(m.prices))
    return {r.asset: Price(r.asset, r.price, r.source_time, r.source) for r in rows}


@dataclass(frozen=True)
class PriceUpdate:
    asset: str
    price: Decimal
    source: str
    source_time: datetime
    event_id: uuid.UUID


def _without_nul(value: Any) -> Any:
    """jsonb refuses U+0000 anywhere in a document."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


@dataclass(frozen=True)
class PriceRejection:
    event_id: uuid.UUID
    asset: str | None
    source: str | None
    source_time: datetime | None
    reason: str
    data: Any

    @classmethod
    def of(cls, e: Envelope, reason: str, at: datetime | None) -> PriceRejection:
        """From a refused event; text PostgreSQL cannot store (NUL) is dropped, so the
        record of a bad event can never itself fail."""

        def clean(value: object, limit: int) -> str | None:
            return value.replace("\x00", "")[:limit] if isinstance(value, str) else None

        return cls(
            e.id,
            clean(e.data.get("asset"), 200),
            clean(e.data.get("source"), 200),
            at,
            clean(reason, 2000) or "",
            e.data,
        )


async def record_price_rejections(
    session: AsyncSession, rejections: Sequence[PriceRejection]
) -> None:
    await session.execute(
        text(
            "INSERT INTO price_rejections (event_id, asset, source, source_time, reason, data) "
            "SELECT * FROM unnest(CAST(:e AS uuid[]), CAST(:a AS text[]), CAST(:s AS text[]), "
            "CAST(:t AS timestamptz[]), CAST(:r AS text[]), CAST(:d AS jsonb[])) "
            "ON CONFLICT (event_id) DO NOTHING"
        ),
        {
            "e": [r.event_id for r in rejections],
            "a": [r.asset for r in rejections],
            "s": [r.source for r in rejections],
            "t": [r.source_time for r in rejections],
            "r": [r.reason for r in rejections],
            "d": [json.dumps(_without_nul(r.data), default=str) for r in rejections],
        },
    )


async def upsert_prices(session: AsyncSession, updates: Sequence[PriceUpdate]) -> list[str]:
    """Store prices newer than what is held; returns the assets that actually changed.

    An update with the same or an older source time than the stored one is ignored, so a
    redelivered or reordered event cannot move a price backwards.
    """
    if not updates:
        return []
    rows = await session.execute(
        text(
            "INSERT INTO prices (asset, price, source, source_time, event_id) "
            "SELECT * FROM unnest(CAST(:a AS text[]), CAST(:p AS numeric[]), CAST(:s AS text[]), "
            "CAST(:t AS timestamptz[]), CAST(:e AS uuid[])) "
            "ON CONFLICT (asset) DO UPDATE SET price = EXCLUDED.price, source = EXCLUDED.source, "
            "source_time = EXCLUDED.source_time, event_id = EXCLUDED.event_id, updated_at = now() "
            "WHERE prices.source_time < EXCLUDED.source_time RETURNING asset"
        ),
        {
            "a": [u.asset for u in updates],
            "p": [u.price for u in updates],
            "s": [u.source for u in updates],
            "t": [u.source_time for u in updates],
            "e": [u.event_id for u in updates],
        },
    )
    return sorted({r.asset for r in rows})


# -- accounts and positions -----------------------------------------------------------


async def account_exists(session: AsyncSession, account_id: str) -> bool:
    return (
        await session.scalar(sa.select(m.accounts.c.id).where(m.accounts.c.id == account_id))
    ) is not None


async def replace_positions(
    session: AsyncSession, items: Sequence[tuple[str, Sequence[Position]]]
) -> None:
    """Make each listed account hold exactly the given positions (zero rows dropped)."""
    if not items:
        return
    ids = [a for a, _ in items]
    await log_book_change(session, "positions", ids)
    await session.execute(
        text(
            "INSERT INTO accounts (id) SELECT unnest(CAST(:ids AS text[])) "
            "ON CONFLICT (id) DO UPDATE SET updated_at = now()"
        ),
        {"ids": ids},
    )
    await session.execute(
        text("DELETE FROM positions WHERE account_id = ANY(CAST(:ids AS text[]))"), {"ids": ids}
    )
    rows = [
        (a, p.asset, p.collateral, p.debt, p.decimals)
        for a, ps in items
        for p in ps
        if p.collateral or p.debt
    ]
    if rows:
        apg = await driver_connection(session)
        await apg.copy_records_to_table(
            "positions",
            records=rows,
            columns=["account_id", "asset", "collateral", "debt", "decimals"],
        )


async def positions_of(session: AsyncSession, ids: Sequence[str]) -> dict[str, list[Position]]:
    # straight on the driver (no SQLAlchemy rows): a tick reads thousands of accounts here;
    # amounts as text, since int(text) is exact and cheaper than Decimal -> int
    apg = await driver_connection(session)
    rows = await apg.fetch(
        "SELECT account_id, asset, collateral::text, debt::text, decimals FROM positions "
        "WHERE account_id = ANY($1::text[]) ORDER BY account_id, asset",
        list(ids),
    )
    out: dict[str, list[Position]] = {i: [] for i in ids}
    for a, asset, c, d, dec in rows:
        out[a].append(Position(asset, int(c), int(d), dec))
    return out


_TIERS: dict[str | None, Tier | None] = {t.value: t for t in Tier} | {None: None}


def _tier(value: str | None) -> Tier | None:
    got = _TIERS.get(value)
    return got if got is not None or value is None else Tier(value)


async def states_of(session: AsyncSession, ids: Sequence[str]) -> dict[str, State]:
    apg = await driver_connection(session)
    rows = await apg.fetch(
        "SELECT account_id, status, known_tier, last_event_at, last_snapshot_at "
        "FROM account_state WHERE account_id = ANY($1::text[])",
        list(ids),
    )
    return {a: State(_tier(s), _tier(k), e, n) for a, s, k, e, n in rows}


# The set-based filter of the live path: the database computes every candidate account's
# exact weighted collateral and debt (NUMERIC, no rounding) and returns only the accounts
# whose status, reminder or snapshot needs attention; Python then applies the Decimal rules
# to those few. Candidates: holders of the given assets, or the given accounts, or (sweep)
# accounts with due reminders/snapshots, no state yet, or a missing/stale price.
_ATTENTION = """
WITH params AS (
  SELECT DISTINCT ON (asset) asset, liquidation_threshold AS lt, max_price_age_seconds AS age,
         decimals
  FROM risk_parameters ORDER BY asset, version DESC
), cfg AS (SELECT * FROM risk_config ORDER BY version DESC LIMIT 1),
assetk AS (  -- per asset, exact: USD per base unit (x threshold); positions use its decimals
  -- ('1e-N' is exact on every server; power(10::numeric, -18) is 0 on PostgreSQL 15)
  SELECT pa.asset,
    pr.price IS NULL
      OR pr.source_time < CAST(:now AS timestamptz) - make_interval(secs => pa.age)
      OR pr.source_time > CAST(:now AS timestamptz)
         + make_interval(secs => cfg.max_future_skew_seconds) AS bad,
    coalesce(pr.price * pa.lt * CAST('1e-' || pa.decimals AS numeric), 0) AS kw,
    coalesce(pr.price * CAST('1e-' || pa.decimals AS numeric), 0) AS kd
  FROM params pa CROSS JOIN cfg LEFT JOIN prices pr USING (asset)
),
target AS ({target}),
agg AS (
  SELECT p.account_id, sum(p.collateral * k.kw) AS w, sum(p.debt * k.kd) AS d,
         bool_or(k.bad) AS unknown
  FROM target t JOIN positions p USING (account_id) JOIN assetk k USING (asset)
  GROUP BY p.account_id
)
SELECT a.account_id FROM agg a CROSS JOIN cfg LEFT JOIN account_state s USING (account_id)
WHERE s.account_id IS NULL
   OR a.unknown IS DISTINCT FROM (s.status = 'unknown_price')
   OR (NOT a.unknown AND s.status IS DISTINCT FROM (CASE
        WHEN a.d = 0 OR a.w >= cfg.healthy * a.d THEN 'healthy'
        WHEN a.w >= cfg.warning * a.d THEN 'warning'
        WHEN a.w >= cfg.margin_call * a.d THEN 'margin_call'
        ELSE 'liquidation' END))
   OR (s.status IN ('margin_call', 'liquidation') AND (s.last_event_at IS NULL
        OR s.last_event_at <= CAST(:now AS timestamptz)
           - make_interval(secs => cfg.reminder_interval_seconds)))
   OR s.last_snapshot_at IS NULL
   OR s.last_snapshot_at <= CAST(:now AS timestamptz)
      - make_interval(secs => cfg.snapshot_interval_seconds)
ORDER BY a.account_id
"""

_BY_ASSETS = "SELECT DISTINCT account_id FROM positions WHERE asset = ANY(CAST(:assets AS text[]))"
_SWEEP = """
  SELECT s.account_id FROM account_state s CROSS JOIN cfg
   WHERE (s.status IN ('margin_call', 'liquidation') AND (s.last_event_at IS NULL
          OR s.last_event_at <= CAST(:now AS timestamptz)
             - make_interval(secs => cfg.reminder_interval_seconds)))
      OR s.last_snapshot_at IS NULL
      OR s.last_snapshot_at <= CAST(:now AS timestamptz)
         - make_interval(secs => cfg.snapshot_interval_seconds)
  UNION SELECT a.id FROM accounts a
   WHERE NOT EXISTS (SELECT 1 FROM account_state s WHERE s.account_id = a.id)
  UNION SELECT p.account_id FROM positions p JOIN params pa USING (asset)
   CROSS JOIN cfg LEFT JOIN prices pr USING (asset)
   WHERE pr.price IS NULL
      OR pr.source_time < CAST(:now AS timestamptz) - make_interval(secs => pa.age)
      OR pr.source_time > CAST(:now AS timestamptz)
         + make_interval(secs => cfg.max_future_skew_seconds)
"""


async def attention(
    session: AsyncSession, now: datetime, *, assets: Sequence[str] | None = None
) -> list[str]:
    """Accounts to re-evaluate: holders of `assets`, or (assets=None) the sweep set."""
    target = _BY_ASSETS if assets is not None else _SWEEP
    params: dict[str, Any] = {"now": now}
    if assets is not None:
        params["assets"] = list(assets)
    rows = await session.execute(text(_ATTENTION.format(target=target)), params)
    return [r.account_id for r in rows]


# -- outcomes: states, snapshots, events ----------------------------------------------


@dataclass(frozen=True)
class StateRow:
    account_id: str
    state: State
    factor: Decimal | None
    evaluated_at: datetime


# the conflict half of the states upsert (bench/risk_live.py times a variant that shares it)
STATES_ON_CONFLICT = (
    "ON CONFLICT (account_id) DO UPDATE SET status = EXCLUDED.status, "
    "known_tier = EXCLUDED.known_tier, factor = EXCLUDED.factor, "
    "last_event_at = EXCLUDED.last_event_at, last_snapshot_at = EXCLUDED.last_snapshot_at, "
    "evaluated_at = EXCLUDED.evaluated_at, evaluated_by = EXCLUDED.evaluated_by"
)
UPSERT_STATES = (
    "INSERT INTO account_state (account_id, status, known_tier, factor, last_event_at, "
    "last_snapshot_at, evaluated_at, evaluated_by) SELECT u.*, $8::text FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::numeric[], $5::timestamptz[], "
    "$6::timestamptz[], $7::timestamptz[]) AS u " + STATES_ON_CONFLICT
)


def state_args(rows: Sequence[StateRow], evaluated_by: str | None = None) -> tuple[Any, ...]:
    """The parameters of the states upsert (built apart from sending it: bench floor)."""

    def v(t: Tier | None) -> str | None:
        return t.value if t is not None else None

    return (
        [r.account_id for r in rows],
        [v(r.state.status) for r in rows],
        [v(r.state.known_tier) for r in rows],
        [r.factor for r in rows],
        [r.state.last_event_at for r in rows],
        [r.state.last_snapshot_at for r in rows],
        [r.evaluated_at for r in rows],
        evaluated_by,
    )


async def send_states(apg: Any, args: tuple[Any, ...]) -> None:
    await apg.execute(UPSERT_STATES, *args)


async def upsert_states(
    session: AsyncSession, rows: Sequence[StateRow], evaluated_by: str | None = None
) -> None:
    if not rows:
        return
    apg = await driver_connection(session)
    await send_states(apg, state_args(rows, evaluated_by))


# -- partition leases -------------------------------------------------------------------


async def lease_partitions(
    session: AsyncSession, owner: str, partitions: int, lease: timedelta
) -> list[int]:
    """Renew this owner's leases and take or give back partitions towards a fair share.

    Fair share: ceil(partitions / live instances) (live: heartbeat, renewed here, within
    the lease time; this one counts). Free or expired partitions are taken up to the
    share; above it, the surplus is released for the newcomers. Returns what is held.
    """
    secs = lease.total_seconds()
    await session.execute(
        text(
            "INSERT INTO risk_partition_leases (partition) SELECT generate_series(0, :n - 1) "
            "ON CONFLICT DO NOTHING"
        ),
        {"n": partitions},
    )
    await session.execute(
        text(
            "UPDATE risk_partition_leases SET expires_at = now() + make_interval(secs => :s), "
            "renewed_at = now() WHERE owner = :o AND partition < :n"
        ),
        {"o": owner, "s": secs, "n": partitions},
    )
    await session.execute(
        text(
            "INSERT INTO risk_instances (instance, seen_at) VALUES (:o, now()) "
            "ON CONFLICT (instance) DO UPDATE SET seen_at = now()"
        ),
        {"o": owner},
    )
    await session.execute(
        text("DELETE FROM risk_instances WHERE seen_at < now() - make_interval(secs => :s)"),
        {"s": secs * 10},
    )
    live = await session.scalar(
        text(
            "SELECT count(*) FROM risk_instances WHERE seen_at > now() - make_interval(secs => :s)"
        ),
        {"s": secs},
    )
    share = -(-partitions // max(int(live or 0), 1))
    mine = [
        int(r[0])
        for r in await session.execute(
            text(
                "SELECT partition FROM risk_partition_leases WHERE owner = :o "
                "AND partition < :n ORDER BY partition"
            ),
            {"o": owner, "n": partitions},
        )
    ]
    if len(mine) > share:
        give = mine[share:]
        await session.execute(
            text(
                "UPDATE risk_partition_leases SET owner = NULL, expires_at = NULL "
                "WHERE owner = :o AND partition = ANY(CAST(:p AS int[]))"
            ),
            {"o": owner, "p": give},
        )
        mine = mine[:share]
    elif len(mine) < share:
        taken = await session.execute(
            text(
                "UPDATE risk_partition_leases SET owner = :o, renewed_at = now(), "
                "expires_at = now() + make_interval(secs => :s) WHERE partition IN ("
                "SELECT partition FROM risk_partition_leases WHERE partition < :n AND "
                "(owner IS NULL OR expires_at IS NULL OR expires_at <= now()) "
                "ORDER BY partition LIMIT :k FOR UPDATE SKIP LOCKED) RETURNING partition"
            ),
            {"o": owner, "s": secs, "n": partitions, "k": share - len(mine)},
        )
        mine = sorted(mine + [int(r[0]) for r in taken])
    return mine


async def release_partitions(session: AsyncSession, owner: str) -> None:
    await session.execute(text("DELETE FROM risk_instances WHERE instance = :o"), {"o": owner})
    await session.execute(
        text("UPDATE risk_partition_leases SET owner = NULL, expires_at = NULL WHERE owner = :o"),
        {"o": owner},
    )


SNAPSHOT_COLUMNS = [
    "account_id",
    "taken_at",
    "reason",
    "status",
    "factor",
    "collateral_value",
    "weighted_collateral",
    "debt_value",
    "borrow_capacity",
    "prices",
]
EVENT_COLUMNS = [
    "id",
    "account_id",
    "event_type",
    "from_tier",
    "to_tier",
    "factor",
    "collateral_value",
    "weighted_collateral",
    "debt_value",
    "borrow_capacity",
    "max_repay_value",
    "prices",
    "created_at",
]


async def copy_snapshots(apg: Any, records: Iterable[tuple[Any, ...]]) -> None:
    """One text-format COPY of `snapshot_record` rows: the server stores the values and
    scales a binary COPY of the Decimals stores (tests/risk/test_payloads.py compares
    every column), and the client skips encoding each Decimal into numeric digits."""
    await send_copy(apg, "health_snapshots", SNAPSHOT_COLUMNS, snapshot_copy(records))


async def copy_snapshots_binary(apg: Any, records: Iterable[tuple[Any, ...]]) -> None:
    """The previous way (binary COPY of the Decimals): the reference the text COPY is
    compared with (tests) and measured against (bench)."""
    await apg.copy_records_to_table("health_snapshots", records=records, columns=SNAPSHOT_COLUMNS)


def _numeric_text(value: Decimal | None) -> str:
    """A Decimal as numeric input text: positional (never an exponent), every digit and
    trailing zero kept, so the server stores the value and scale a binary COPY stores."""
    return "\\N" if value is None else format(value, "f")


def snapshot_copy(records: Iterable[tuple[Any, ...]]) -> bytes:
    """The text-format COPY payload of `snapshot_record` rows (SNAPSHOT_COLUMNS)."""
    t, n = _copy_text, _numeric_text
    lines = [
        "\t".join(
            (
                t(account_id),
                taken_at.isoformat(),
                t(reason),
                t(status),
                n(factor),
                n(coll),
                n(weighted),
                n(debt),
                n(borrow),
                t(prices),
            )
        )
        for account_id, taken_at, reason, status, factor, coll, weighted, debt, borrow, prices in (
            records
        )
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def outbox_copy(records: Iterable[tuple[Any, ...]]) -> bytes:
    """The text-format COPY payload of `outbox_records` rows (OUTBOX_COLUMNS)."""
    t = _copy_text
    lines = [
        "\t".join((str(i), t(topic), t(subject), t(event_type), t(envelope)))
        for i, topic, subject, event_type, envelope in records
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


async def copy_events(
    apg: Any, envelopes: Sequence[Envelope], prices_json: Sequence[str] | None = None
) -> None:
    """Store margin events and queue them in the outbox, one COPY each (same transaction).

    `prices_json`: each event's `prices` as JSON when the caller has it already (a pass
    shares one document among the accounts holding the same assets)."""
    if not envelopes:
        return
    allowed = lookup_topic(MARGIN_TOPIC).event_types
    for e in envelopes:
        if e.type not in allowed:
            raise ValueError(f"{e.type!r} is not an event type of {MARGIN_TOPIC}")
    await copy_margin_events(apg, envelopes, prices_json)
    await copy_outbox(apg, envelopes)


def _copy_text(value: str | None) -> str:
    """One field of a text-format COPY row (NULL, or the value with its escapes)."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def margin_event_copy(
    envelopes: Sequence[Envelope], prices_json: Sequence[str] | None = None
) -> bytes:
    """The text-format COPY payload of margin_events, built from the envelopes' own
    strings: the decimal fields are already the exact strings the envelope carries (the
    server parses them into the same numerics a binary COPY of their Decimals wrote,
    without the round trip)."""
    if prices_json is None:
        prices_json = [json.dumps(e.data["prices"]) for e in envelopes]
    t = _copy_text
    lines = []
    for e, pj in zip(envelopes, prices_json, strict=True):
        d = e.data
        lines.append(
            "\t".join(
                (
                    str(e.id),
                    t(e.subject),
                    t(e.type),
                    t(d["from_tier"]),
                    t(d["to_tier"]),
                    t(d["factor"]),
                    t(d["collateral_value"]),
                    t(d["weighted_collateral"]),
                    t(d["debt_value"]),
                    t(d["borrow_capacity"]),
                    t(d["max_repay_value"]),
                    t(pj),
                    e.time.isoformat(),
                )
            )
        )
    return ("\n".join(lines) + "\n").encode() if lines else b""


async def send_copy(apg: Any, table: str, columns: Sequence[str], payload: bytes) -> None:
    """One text-format COPY of a payload built beforehand."""
    if payload:

        async def source() -> AsyncIterator[bytes]:  # no thread-pool hop, as a file would take
            yield payload

        await apg.copy_to_table(table, source=source(), columns=list(columns), format="text")


async def copy_margin_events(
    apg: Any, envelopes: Sequence[Envelope], prices_json: Sequence[str] | None = None
) -> None:
    await send_copy(apg, "margin_events", EVENT_COLUMNS, margin_event_copy(envelopes, prices_json))


OUTBOX_COLUMNS = ["id", "topic", "subject", "event_type", "envelope"]


def outbox_records(envelopes: Sequence[Envelope]) -> list[tuple[Any, ...]]:
    return [(e.id, MARGIN_TOPIC, e.subject, e.type, e.to_json()) for e in envelopes]


async def send_outbox(apg: Any, records: Sequence[tuple[Any, ...]]) -> None:
    """A text-format COPY of the envelopes' JSON (the jsonb column parses the same text
    a binary COPY carries, whichever way it arrives)."""
    if records:
        await send_copy(apg, "outbox", OUTBOX_COLUMNS, outbox_copy(records))
        await apg.execute(NOTIFY_SQL)  # wake the relay on commit, as outbox.publish does


async def copy_outbox(apg: Any, envelopes: Sequence[Envelope]) -> None:
    """The platform's outbox rows (same columns `outbox.publish` writes), in one COPY.

    Not `outbox.publish_rows`: with ~1 KB margin envelopes its unnest(jsonb[]) measured
    about 1.6x slower for 10,000 rows, which bench (e) (<= 1 s) cannot afford.
    """
    await send_outbox(apg, outbox_records(envelopes))


def _dec(value: str | None) -> Decimal | None:
    return Decimal(value) if value is not None else None


# -- reads for the API ----------------------------------------------------------------


async def snapshots(session: AsyncSession, account_id: str, limit: int) -> list[Any]:
    rows = await session.execute(
        sa.select(m.health_snapshots)
        .where(m.health_snapshots.c.account_id == account_id)
        .order_by(m.health_snapshots.c.taken_at.desc(), m.health_snapshots.c.id.desc())
        .limit(limit)
    )
    return list(rows)


async def events(
    session: AsyncSession,
    *,
    account_id: str | None = None,
    tier: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[Any]:
    q = sa.select(m.margin_events)
    if account_id is not None:
        q = q.where(m.margin_events.c.account_id == account_id)
    if tier is not None:
        q = q.where(m.margin_events.c.to_tier == tier)
    if since is not None:
        q = q.where(m.margin_events.c.created_at >= since)
    q = q.order_by(m.margin_events.c.created_at.desc(), m.margin_events.c.id).limit(limit)
    return list(await session.execute(q))


async def counts(session: AsyncSession) -> dict[str, int]:
    """The counters the triggers of migration 0006 keep (summed over their slots):
    `tier:<status>` per status of account_state, `accounts`, `accounts_with_positions`."""
    rows = await session.execute(
        text("SELECT counter, sum(n) AS n FROM risk_counters GROUP BY counter")
    )
    return {r.counter: int(r.n) for r in rows}


async def state_row(session: AsyncSession, account_id: str) -> Any:
    return (
        await session.execute(
            sa.select(m.account_state).where(m.account_state.c.account_id == account_id)
        )
    ).one_or_none()


# -- escrows --------------------------------------------------------------------------


async def record_escrow_event(
    session: AsyncSession,
    chain_id: int,
    address: str,
    block: int,
    log_index: int,
    event_type: str,
    data: dict[str, Any],
) -> list[tuple[str, dict[str, Any]]]:
    """Keep one chain event of an escrow; returns all of its events (type, data).

    Serialised per escrow (transaction-scoped lock), so two consumers folding the same
    escrow cannot overwrite each other's result with an older one.
    """
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('risk:escrow:' || :c || ':' || :a))"),
        {"c": str(chain_id), "a": address},
    )
    await session.execute(
        text(
            "INSERT INTO escrow_events (chain_id, address, block_number, log_index, event_type, "
            "data) VALUES (:c, :a, :b, :li, :t, CAST(:d AS jsonb)) ON CONFLICT DO NOTHING"
        ),
        {
            "c": chain_id,
            "a": address,
            "b": block,
            "li": log_index,
            "t": event_type,
            "d": json.dumps(_without_nul(data), default=str),
        },
    )
    rows = await session.execute(
        text(
            "SELECT event_type, data FROM escrow_events WHERE chain_id = :c AND address = :a "
            "ORDER BY block_number, log_index"
        ),
        {"c": chain_id, "a": address},
    )
    return [(r.event_type, r.data) for r in rows]


_STATUS_OF = {"created": "open", "approved": "approved", "released": "released"}


async def store_escrow(session: AsyncSession, s: EscrowState) -> None:
    """The escrow as settlement's rule folds it (`created` is shown here as `open`)."""
    await session.execute(
        text(
            "INSERT INTO escrows (chain_id, address, payer, payee, arbiter, asset, amount, "
            "decimals, approvals_required, approvers, status, last_block, last_log_index) "
            "VALUES (:chain, :addr, :payer, :payee, :arbiter, :asset, :amount, :decimals, "
            ":required, CAST(:approvers AS text[]), :status, :block, :li) "
            "ON CONFLICT (chain_id, address) DO UPDATE SET payer = EXCLUDED.payer, "
            "payee = EXCLUDED.payee, arbiter = EXCLUDED.arbiter, asset = EXCLUDED.asset, "
            "amount = EXCLUDED.amount, decimals = EXCLUDED.decimals, "
            "approvals_required = EXCLUDED.approvals_required, approvers = EXCLUDED.approvers, "
            "status = EXCLUDED.status, last_block = EXCLUDED.last_block, "
            "last_log_index = EXCLUDED.last_log_index, updated_at = now()"
        ),
        {
            "chain": s.chain_id,
            "addr": s.address,
            "payer": s.payer,
            "payee": s.payee,
            "arbiter": s.arbiter,
            "asset": s.asset,
            "amount": s.amount,
            "decimals": s.decimals,
            "required": s.approvals_required,
            "approvers": list(s.approvers),
            "status": _STATUS_OF.get(s.status, s.status),
            "block": s.last.block_number,
            "li": s.last.log_index,
        },
    )


async def escrow_exposure(session: AsyncSession, party: str) -> list[Any]:
    """Open escrow amounts per asset: `locked` where the party pays, `pending` where paid."""
    rows = await session.execute(
        text(
            "SELECT CASE WHEN lower(payer) = lower(:p) THEN 'locked' ELSE 'pending' END AS side, "
            "asset, max(decimals) AS decimals, sum(amount) AS amount, count(*) AS escrows "
            "FROM escrows WHERE status IN ('open', 'approved') "
            "AND (lower(payer) = lower(:p) OR lower(payee) = lower(:p)) "
            "GROUP BY 1, asset ORDER BY 1, asset"
        ),
        {"p": party},
    )
    return list(rows)
