"""Use cases of the risk service: positions, prices, re-evaluation, parameters, views.

Who picks the accounts to re-evaluate: in a service process with RISK_BOOK=memory, its
book in memory (live.py; every use case below hands it the transaction); otherwise
(RISK_BOOK=sql, and the CLI commands, which keep no book) one SQL statement computes the
exact (NUMERIC) sums of every affected account and returns only those whose status,
reminder or snapshot needs attention. Either way the Decimal rules of domain.py then
decide events for those few, and all outcomes are written with COPY. Nothing here commits.
"""

from __future__ import annotations

import decimal
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import SPEC_VERSION, Envelope
from fusion_prime.platform.database import driver_connection
from fusion_prime.platform.errors import ConflictError, InvalidError, NotFoundError
from fusion_prime.platform.observability import get_logger
from fusion_prime.risk import repository as repo
from fusion_prime.risk.domain import (
    EXACT,
    RATIO_PLACES,
    Decision,
    Evaluator,
    Health,
    Position,
    RiskParams,
    State,
    Tier,
    TierConfig,
    decide,
    evaluate,
    validate_positions,
)

log = get_logger(__name__)

EVALUATIONS = Counter(
    "fp_risk_evaluations_total", "Accounts evaluated with the Decimal rules", ["trigger"]
)
MARGIN_EVENTS = Counter("fp_risk_margin_events_total", "Margin events emitted", ["event_type"])
REEVAL_SECONDS = Histogram(
    "fp_risk_reevaluation_seconds",
    "Duration of one re-evaluation pass (filter + rules + writes)",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def now_utc() -> datetime:
    return datetime.now(UTC)


def dec_str(value: Decimal | None) -> str | None:
    """Decimal as a plain string, trimmed to 18 places for display (None stays None)."""
    if value is None:
        return None
    # the common case, positional digits that fit: trailing zeros dropped by hand is the
    # normalized string when at most 18 places remain (as many digits as EXACT keeps)
    s = format(value, "f")
    if len(s) <= 60:
        dot = s.find(".")
        if dot < 0:
            return s
        t = s.rstrip("0")
        if len(t) - dot <= 19:
            return t[:-1] if len(t) == dot + 1 else t
    if value.adjusted() < 100:
        # most values have at most 18 places already and quantizing them changes nothing:
        # normalized without rounding (trapped), the string says whether it has more
        try:
            s = format(value.normalize(_UNROUNDED), "f")
        except decimal.Rounded:
            s = ""
        dot = s.find(".")
        if not s or (dot >= 0 and len(s) - dot > 19):
            s = format(value.quantize(RATIO_PLACES, context=EXACT).normalize(EXACT), "f")
        return s
    return format(value.normalize(EXACT), "f")


# EXACT's precision, raising where EXACT would round
_UNROUNDED = decimal.Context(prec=EXACT.prec, rounding=EXACT.rounding, traps=[decimal.Rounded])


StatesReader = Callable[[AsyncSession, Sequence[str]], Awaitable[Mapping[str, State]]]
PositionsReader = Callable[
    [AsyncSession, Sequence[str]], Awaitable[Mapping[str, Sequence[Position]]]
]


@dataclass
class Outcome:
    """What one re-evaluation pass did (for logs, tests and the CLI)."""

    evaluated: int = 0
    changed: int = 0
    events: list[Envelope] = field(default_factory=list)
    snapshots: int = 0
    states: list[repo.StateRow] = field(default_factory=list)  # the state rows written


class Shared:
    """What the accounts of one pass share, formatted once: the price strings and the
    `prices` JSON document of each set of held assets (the prices of a pass are fixed)."""

    def __init__(self) -> None:
        self._dec: dict[Decimal, str | None] = {}
        self._at: datetime | None = None
        self._at_s = ""
        self._prices: dict[tuple[tuple[str, Decimal], ...], tuple[dict[str, str | None], str]] = {}

    def time(self, at: datetime | None) -> str | None:
        """An ISO time (a pass evaluates every account at the same time)."""
        if at is None:
            return None
        if at is not self._at:
            self._at, self._at_s = at, at.isoformat()
        return self._at_s

    def dec(self, value: Decimal) -> str | None:
        s = self._dec.get(value)
        if s is None:
            s = self._dec[value] = dec_str(value)
        return s

    def prices(self, h: Health) -> tuple[dict[str, str | None], str]:
        """The `prices` mapping (a fresh copy, callers may keep it) and its JSON."""
        key = tuple(sorted(h.prices.items()))
        got = self._prices.get(key)
        if got is None:
            doc = {a: self.dec(p) for a, p in key}
            got = self._prices[key] = (doc, json.dumps(doc))
        return dict(got[0]), got[1]


def health_json(h: Health, shared: Shared | None = None) -> dict[str, Any]:
    prices = (shared or Shared()).prices(h)[0]
    return {
        "status": h.status.value,
        "factor": dec_str(h.factor),
        "collateral_value": dec_str(h.collateral_value),
        "weighted_collateral": dec_str(h.weighted_collateral),
        "debt_value": dec_str(h.debt_value),
        "borrow_capacity": dec_str(h.borrow_capacity),
        "price_drop_to_liquidation": dec_str(h.price_drop_to_liquidation),
        "max_repay_value": dec_str(h.max_repay_value),
        "repays": [
            {
                "asset": r.asset,
                "debt_value": dec_str(r.debt_value),
                "close_factor": dec_str(r.close_factor),
                "max_repay_value": dec_str(r.max_repay_value),
                "max_repay_units": str(r.max_repay_units),
            }
            for r in h.repays
        ],
        "seizures": [
            {
                "debt_asset": s.debt_asset,
                "asset": s.asset,
                "repay_value": dec_str(s.repay_value),
                "seize_value": dec_str(s.seize_value),
                "seize_units": str(s.seize_units),
            }
            for s in h.seizures
        ],
        "prices": prices,
        "missing_prices": list(h.missing_prices),
        "stale_prices": list(h.stale_prices),
        "evaluated_at": (shared or Shared()).time(h.evaluated_at),
    }


def build_event(
    account_id: str,
    event_type: str,
    d: Decision,
    h: Health,
    at: datetime,
    shared: Shared | None = None,
) -> Envelope:
    data = {
        "account_id": account_id,
        "from_tier": d.from_tier.value if d.from_tier else None,
        "to_tier": (d.to_tier or Tier.UNKNOWN_PRICE).value,
        **health_json(h, shared),
    }
    # every field is ours and of the validated types (a constant type and source, the
    # account id as subject, a JSON-ready dict): constructed without re-validation, which
    # was a tenth of a tick's cost per event
    return Envelope.model_construct(
        id=uuid.uuid4(),
        specversion=SPEC_VERSION,
        type=event_type,
        source="risk",
        time=at,
        subject=account_id,
        datacontenttype="application/json",
        schemaversion=1,
        data=data,
    )


def snapshot_record(
    account_id: str, reason: str, h: Health, at: datetime, shared: Shared | None = None
) -> tuple[Any, ...]:
    return (
        account_id,
        at,
        reason,
        h.status.value,
        h.factor,
        h.collateral_value,
        h.weighted_collateral,
        h.debt_value,
        h.borrow_capacity,
        (shared or Shared()).prices(h)[1],
    )


@dataclass
class Prepared:
    """A pass's decisions and documents, before anything is written."""

    evaluated: int = 0
    changed: int = 0
    states: list[repo.StateRow] = field(default_factory=list)
    events: list[Envelope] = field(default_factory=list)
    prices_json: list[str] = field(default_factory=list)  # each event's `prices` JSON
    snapshots: list[tuple[Any, ...]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # events per type


def prepare_outcomes(
    items: Sequence[tuple[str, State, Health]], config: TierConfig, now: datetime
) -> Prepared:
    """Decide each evaluated account and build its state row, events and snapshot."""
    out = Prepared(evaluated=len(items))
    shared = Shared()
    counts = out.counts
    for account_id, state, health in items:
        d = decide(state, health, config, now)
        if not d.anything:
            continue
        out.changed += 1
        out.states.append(repo.StateRow(account_id, d.state, health.factor, now))
        for et in d.events:
            out.events.append(build_event(account_id, et, d, health, now, shared))
            out.prices_json.append(shared.prices(health)[1])
            counts[et] = counts.get(et, 0) + 1
        if d.snapshot is not None:
            out.snapshots.append(snapshot_record(account_id, d.snapshot, health, now, shared))
    return out


async def write_outcomes(
    session: AsyncSession,
    p: Prepared,
    trigger: str,
    *,
    log_states: bool = True,
    evaluated_by: str | None = None,
) -> Outcome:
    """Persist a prepared pass: states, snapshots, margin events and their outbox rows."""
    for et, k in p.counts.items():
        MARGIN_EVENTS.labels(et).inc(k)
    await repo.upsert_states(session, p.states, evaluated_by)
    if log_states and p.states:
        await repo.log_book_change(session, "states", [r.account_id for r in p.states])
    if p.snapshots or p.events:
        apg = await driver_connection(session)
        if p.snapshots:
            await repo.copy_snapshots(apg, p.snapshots)
        await repo.copy_events(apg, p.events, p.prices_json)
    EVALUATIONS.labels(trigger).inc(p.evaluated)
    return Outcome(p.evaluated, p.changed, p.events, len(p.snapshots), p.states)


async def apply_outcomes(
    session: AsyncSession,
    items: Sequence[tuple[str, State, Health]],
    config: TierConfig,
    now: datetime,
    trigger: str,
    *,
    log_states: bool = True,
    evaluated_by: str | None = None,
) -> Outcome:
    """Decide and persist tier changes, events and snapshots for evaluated accounts.

    `log_states`: record the written states in `book_changes`, so a service keeping the
    book in memory picks them up (False when that book is the writer).
    """
    return await write_outcomes(
        session,
        prepare_outcomes(items, config, now),
        trigger,
        log_states=log_states,
        evaluated_by=evaluated_by,
    )


async def reevaluate_accounts(
    session: AsyncSession,
    ids: Sequence[str],
    now: datetime,
    trigger: str,
    *,
    log_states: bool = True,
    evaluated_by: str | None = None,
    read_positions: PositionsReader = repo.positions_of,
    read_states: StatesReader = repo.states_of,
) -> Outcome:
    """Evaluate the given accounts with the Decimal rules and persist what changed.

    `read_positions`, `read_states`: where the exact positions and the stored states come
    from (a book in memory holds them; by default they are read from the tables)."""
    if not ids:
        return Outcome()
    _, config = await repo.get_config(session)
    params = await repo.current_params(session)
    prices = await repo.all_prices(session)
    positions = await read_positions(session, ids)
    states = await read_states(session, ids)
    # one Evaluator for the pass: what the accounts share is worked out once per asset
    ev = Evaluator(params, prices, config, now).evaluate
    items = [(a, states.get(a, State()), ev(positions[a])) for a in ids]
    return await apply_outcomes(
        session, items, config, now, trigger, log_states=log_states, evaluated_by=evaluated_by
    )


async def _book(session: AsyncSession) -> Any:
    """The process's in-memory book for this database, held for this transaction
    (before any evaluation lock: the book's lock always comes first), or None when the
    process keeps no book (RISK_BOOK=sql, or a CLI command)."""
    from fusion_prime.risk import live

    book = live.book_for(session)
    if book is not None:
        await book.begin(session)
    return book


async def reevaluate_assets(
    session: AsyncSession, assets: Sequence[str], now: datetime | None = None
) -> Outcome:
    """Price change: the database filters the holders of `assets` that need attention."""
    now = now or now_utc()
    started = time.perf_counter()
    await repo.lock_evaluation(session)
    ids = await repo.attention(session, now, assets=assets)
    out = await reevaluate_accounts(session, ids, now, "price")
    REEVAL_SECONDS.labels("price").observe(time.perf_counter() - started)
    return out


async def sweep(session: AsyncSession, now: datetime | None = None) -> Outcome:
    """Time-driven work: prices going stale, reminders, periodic snapshots."""
    started = time.perf_counter()
    book = await _book(session)
    if book is not None:
        out: Outcome = await book.refresh(session, now, "sweep", everyone=True)
        REEVAL_SECONDS.labels("sweep").observe(time.perf_counter() - started)
        return out
    now = now or now_utc()
    if not await repo.lock_evaluation(session, wait=False):
        return Outcome()  # another instance is sweeping or re-evaluating right now
    ids = await repo.attention(session, now, assets=None)
    out = await reevaluate_accounts(session, ids, now, "sweep")
    REEVAL_SECONDS.labels("sweep").observe(time.perf_counter() - started)
    return out


# -- positions ------------------------------------------------------------------------


async def set_positions(
    session: AsyncSession,
    items: Sequence[tuple[str, Sequence[Position]]],
    now: datetime | None = None,
) -> Outcome:
    """Replace each account's positions atomically, then re-evaluate those accounts."""
    book = await _book(session)
    await repo.lock_evaluation(session)
    params = await repo.current_params(session)
    problems: list[tuple[str, str]] = []
    for account_id, positions in items:
        for p in validate_positions(positions, params):
            where, message = p.split(": ", 1)
            problems.append((where, message if len(items) == 1 else f"{account_id}: {message}"))
    if problems:
        raise InvalidError(
            "; ".join(f"{f}: {msg}" for f, msg in problems),
            errors=[{"field": f, "message": msg} for f, msg in problems],
        )
    await repo.replace_positions(session, items)
    ids = [a for a, _ in items]
    if book is not None:
        out: Outcome = await book.refresh(session, now, "positions", force=ids)
        return out
    return await reevaluate_accounts(session, ids, now or now_utc(), "positions")


async def account_health(
    session: AsyncSession, account_id: str, now: datetime | None = None
) -> Health:
    if not await repo.account_exists(session, account_id):
        raise NotFoundError(f"account {account_id} does not exist")
    _, config = await repo.get_config(session)
    params = await repo.current_params(session)
    prices = await repo.all_prices(session)
    positions = (await repo.positions_of(session, [account_id]))[account_id]
    return evaluate(positions, params, prices, config, now or now_utc())


# -- prices ---------------------------------------------------------------------------


async def apply_prices(
    session: AsyncSession, updates: Sequence[repo.PriceUpdate], now: datetime | None = None
) -> Outcome:
    """Store newer prices; re-evaluate the holders of the assets that changed."""
    book = await _book(session)
    latest: dict[str, repo.PriceUpdate] = {}
    for u in updates:
        if u.asset not in latest or u.source_time > latest[u.asset].source_time:
            latest[u.asset] = u
    changed = await repo.upsert_prices(session, list(latest.values()))
    if book is not None:
        # the book applies every stored price it has not seen (this batch's, and those
        # another instance stored first) to its holders' sums
        started = time.perf_counter()
        out: Outcome = await book.refresh(session, now, "price")
        REEVAL_SECONDS.labels("price").observe(time.perf_counter() - started)
        return out
    if not changed:
        return Outcome()
    return await reevaluate_assets(session, changed, now)


# -- risk parameters and configuration ------------------------------------------------


async def put_params(
    session: AsyncSession, rp: RiskParams, *, created_by: str | None = None
) -> RiskParams:
    """A new parameter version; the asset's decimals are fixed by its first version."""
    versions = await repo.param_versions(session, rp.asset)
    if versions and versions[0][0].decimals != rp.decimals:
        raise ConflictError(
            f"{rp.asset} has {versions[0][0].decimals} decimals; positions are stored in them",
            field="decimals",
        )
    book = await _book(session)
    stored = await repo.insert_params(session, rp, created_by=created_by)
    if book is not None:
        await book.refresh(session, None, "params")
    else:
        await reevaluate_assets(session, [rp.asset])
    return stored


async def put_config(
    session: AsyncSession, cfg: TierConfig, *, created_by: str | None = None
) -> int:
    book = await _book(session)
    await repo.lock_evaluation(session)
    version = await repo.insert_config(session, cfg, created_by=created_by)
    if book is not None:
        await book.refresh(session, None, "config")
        return version
    # thresholds moved: every account with positions may change tier
    ids = await repo.attention(session, now_utc(), assets=list(await repo.current_params(session)))
    await reevaluate_accounts(session, ids, now_utc(), "config")
    return version
