"""Margin-health rules with exact Decimal arithmetic (Aave v3 semantics), no I/O.

The bulk engine (engine.py) computes the same quantities in float64 for speed and falls
back to these functions for accounts sitting on a tier boundary, so this module is the
single definition of what an account's tier is.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

# Products of 78-digit base-unit amounts with prices and thresholds stay exact at this
# precision; the only rounding left is in the final division (the reported factor).
EXACT = decimal.Context(prec=160, rounding=decimal.ROUND_HALF_EVEN)
ZERO = Decimal(0)
ONE = Decimal(1)
# Reported ratios (factor, price drop, repay at a bonus) are quotients; 18 places is far
# below any decision's resolution (tiers are decided on exact sums, see `classify`).
RATIO_PLACES = Decimal("1e-18")


def ratio(numerator: Decimal, denominator: Decimal) -> Decimal:
    return EXACT.divide(numerator, denominator).quantize(RATIO_PLACES, context=EXACT)


ACCOUNT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
ASSET_RE = re.compile(r"^[A-Z0-9][A-Z0-9._\-]{0,31}$")
MAX_DECIMALS = 36
MAX_UNITS = 10**78 - 1


class Tier(StrEnum):
    """Account status; `unknown_price` is a status, never a step on the risk ladder."""

    HEALTHY = "healthy"
    WARNING = "warning"
    MARGIN_CALL = "margin_call"
    LIQUIDATION = "liquidation"
    UNKNOWN_PRICE = "unknown_price"


# best first; index = severity
LADDER: tuple[Tier, ...] = (Tier.HEALTHY, Tier.WARNING, Tier.MARGIN_CALL, Tier.LIQUIDATION)
SEVERITY = {t: i for i, t in enumerate(LADDER)}
ALERTING = frozenset({Tier.MARGIN_CALL, Tier.LIQUIDATION})


@dataclass(frozen=True)
class TierConfig:
    """Lower factor bounds of healthy / warning / margin_call, and the dampers.

    `hysteresis` is an absolute factor margin: moving to a *better* tier needs the factor
    to clear that tier's lower bound by it, so an account hovering at a boundary does not
    flap. Moving to a worse tier happens as soon as the bound is crossed.
    """

    healthy: Decimal = Decimal("1.25")
    warning: Decimal = Decimal("1.10")
    margin_call: Decimal = Decimal("1.00")
    hysteresis: Decimal = Decimal("0.02")
    reminder_interval: timedelta = timedelta(hours=1)
    snapshot_interval: timedelta = timedelta(hours=6)
    close_factor: Decimal = Decimal("0.5")
    full_close_below: Decimal = Decimal("0.95")
    # how far a price's source time may lie ahead of our clock; beyond it the price is
    # refused at the door and, if one was stored before, counts as stale
    max_future_skew: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if not (self.healthy > self.warning > self.margin_call > ZERO):
            raise ValueError("tier bounds must satisfy healthy > warning > margin_call > 0")
        if self.hysteresis < ZERO:
            raise ValueError("hysteresis must be >= 0")
        if not (ZERO < self.close_factor <= ONE):
            raise ValueError("close_factor must be in (0, 1]")
        if self.max_future_skew < timedelta(0):
            raise ValueError("max_future_skew must be >= 0")

    @property
    def bounds(self) -> tuple[Decimal, Decimal, Decimal]:
        return (self.healthy, self.warning, self.margin_call)


@dataclass(frozen=True)
class RiskParams:
    """One version of an asset's parameters (fractions, e.g. 0.80 for 80%)."""

    asset: str
    ltv: Decimal
    liquidation_threshold: Decimal
    liquidation_bonus: Decimal
    max_price_age: timedelta
    version: int = 1
    decimals: int | None = None  # base-unit decimals every position in the asset must use

    def __post_init__(self) -> None:
        if not (ZERO <= self.ltv <= self.liquidation_threshold <= ONE):
            raise ValueError("need 0 <= ltv <= liquidation_threshold <= 1")
        if not (ZERO <= self.liquidation_bonus <= ONE):
            raise ValueError("liquidation_bonus must be in [0, 1]")
        if self.max_price_age <= timedelta(0):
            raise ValueError("max_price_age must be positive")


@dataclass(frozen=True)
class Position:
    """Collateral and debt of one asset, in integer base units."""

    asset: str
    collateral: int
    debt: int
    decimals: int

    def collateral_units(self) -> Decimal:
        return Decimal(self.collateral).scaleb(-self.decimals, EXACT)

    def debt_units(self) -> Decimal:
        return Decimal(self.debt).scaleb(-self.decimals, EXACT)


@dataclass(frozen=True)
class Price:
    asset: str
    price: Decimal  # USD per whole unit
    source_time: datetime
    source: str = ""


@dataclass(frozen=True)
class Repay:
    """How much of one debt asset a single liquidation may repay (Aave v3 close factor:
    a share of *that asset's* debt, not of the account's total debt)."""

    asset: str
    debt_value: Decimal
    close_factor: Decimal
    max_repay_value: Decimal
    max_repay_units: int  # base units of the debt asset (floor)


@dataclass(frozen=True)
class Seizure:
    """What a liquidator may take from one collateral asset for repaying one debt asset."""

    asset: str  # the collateral seized
    repay_value: Decimal
    seize_value: Decimal
    seize_units: int  # base units of the collateral asset
    debt_asset: str = ""  # the debt repaid


@dataclass(frozen=True)
class Health:
    status: Tier
    factor: Decimal | None  # None = infinite (no debt) or unknown (missing/stale price)
    collateral_value: Decimal
    weighted_collateral: Decimal  # sum(value x liquidation threshold)
    debt_value: Decimal
    borrow_capacity: Decimal  # sum(value x ltv) - debt, floored at 0
    price_drop_to_liquidation: Decimal | None  # fraction of collateral prices; None = n/a
    max_repay_value: Decimal  # the largest single liquidation (over the debt assets)
    seizures: tuple[Seizure, ...]
    prices: Mapping[str, Decimal]
    missing_prices: tuple[str, ...] = ()
    repays: tuple[Repay, ...] = ()
    stale_prices: tuple[str, ...] = ()
    evaluated_at: datetime | None = None

    @property
    def infinite(self) -> bool:
        return self.status is not Tier.UNKNOWN_PRICE and self.factor is None


def classify(weighted: Decimal, debt: Decimal, config: TierConfig) -> Tier:
    """The raw tier, by exact cross-multiplication (no rounding of the factor)."""
    if debt <= ZERO:
        return Tier.HEALTHY
    for tier, bound in zip(LADDER, config.bounds, strict=False):
        if weighted >= EXACT.multiply(bound, debt):
            return tier
    return Tier.LIQUIDATION


def with_hysteresis(
    previous: Tier | None, weighted: Decimal, debt: Decimal, config: TierConfig
) -> Tier:
    """Next ladder tier from the previous known one: worse at once, better only past the margin."""
    raw = classify(weighted, debt, config)
    if previous is None or previous is Tier.UNKNOWN_PRICE:
        return raw
    if SEVERITY[raw] >= SEVERITY[previous]:
        return raw
    # improving: the best tier whose bound + hysteresis is cleared, never worse than before
    shifted = raw
    if debt > ZERO:
        shifted = Tier.LIQUIDATION
        for tier, bound in zip(LADDER, config.bounds, strict=False):
            if weighted >= EXACT.multiply(bound + config.hysteresis, debt):
                shifted = tier
                break
    return shifted if SEVERITY[shifted] < SEVERITY[previous] else previous


def evaluate(
    positions: Sequence[Position],
    params: Mapping[str, RiskParams],
    prices: Mapping[str, Price],
    config: TierConfig,
    now: datetime,
) -> Health:
    """Health of one account. A missing or stale price of any held asset -> unknown_price."""
    missing = sorted({p.asset for p in positions if p.asset not in prices})
    stale = sorted(
        {
            p.asset
            for p in positions
            if p.asset in prices
            and not usable_price_time(
                prices[p.asset].source_time, now, params[p.asset].max_price_age, config
            )
        }
    )
    used = {p.asset: prices[p.asset].price for p in positions if p.asset in prices}
    coll = weighted = capacity = debt = ZERO
    coll_by_asset: dict[str, Decimal] = {}
    debt_by_asset: dict[str, Decimal] = {}
    for pos in positions:
        if pos.asset not in prices:
            continue
        price = prices[pos.asset].price
        rp = params[pos.asset]
        cv = EXACT.multiply(pos.collateral_units(), price)
        dv = EXACT.multiply(pos.debt_units(), price)
        coll = EXACT.add(coll, cv)
        weighted = EXACT.add(weighted, EXACT.multiply(cv, rp.liquidation_threshold))
        capacity = EXACT.add(capacity, EXACT.multiply(cv, rp.ltv))
        debt = EXACT.add(debt, dv)
        # Aave refuses to liquidate collateral whose liquidation threshold is 0: it backs
        # nothing, so it is never offered for seizure
        if pos.collateral > 0 and rp.liquidation_threshold > ZERO:
            coll_by_asset[pos.asset] = cv
        if pos.debt > 0:
            debt_by_asset[pos.asset] = dv
    borrow = max(ZERO, capacity - debt)
    if missing or stale:
        return Health(
            status=Tier.UNKNOWN_PRICE,
            factor=None,
            collateral_value=coll,
            weighted_collateral=weighted,
            debt_value=debt,
            borrow_capacity=borrow,
            price_drop_to_liquidation=None,
            max_repay_value=ZERO,
            seizures=(),
            prices=used,
            missing_prices=tuple(missing),
            stale_prices=tuple(stale),
            evaluated_at=now,
        )
    return _concluded(
        positions,
        params,
        prices,
        config,
        now,
        used,
        coll,
        weighted,
        borrow,
        debt,
        coll_by_asset,
        debt_by_asset,
    )


def _concluded(
    positions: Sequence[Position],
    params: Mapping[str, RiskParams],
    prices: Mapping[str, Price],
    config: TierConfig,
    now: datetime,
    used: dict[str, Decimal],
    coll: Decimal,
    weighted: Decimal,
    borrow: Decimal,
    debt: Decimal,
    coll_by_asset: dict[str, Decimal],
    debt_by_asset: dict[str, Decimal],
) -> Health:
    """The health of an account whose prices are all usable, from its exact sums."""
    tier = classify(weighted, debt, config)
    factor = ratio(weighted, debt) if debt > ZERO else None
    drop: Decimal | None = None
    if factor is not None and weighted > ZERO:
        # all collateral prices x (1 - d), debt prices fixed: factor x (1 - d) = 1
        drop = max(ZERO, ONE - ratio(debt, weighted))
    repays: tuple[Repay, ...] = ()
    seizures: tuple[Seizure, ...] = ()
    if factor is not None and tier is Tier.LIQUIDATION:
        close = ONE if factor <= config.full_close_below else config.close_factor
        by_asset = {p.asset: p for p in positions}
        repays = tuple(
            _repay(by_asset[asset], prices[asset].price, value, close)
            for asset, value in sorted(debt_by_asset.items())
        )
        seizures = tuple(
            _seizure(
                by_asset[asset],
                params[asset],
                prices[asset].price,
                coll_by_asset[asset],
                r.max_repay_value,
                r.asset,
            )
            for r in repays
            for asset in sorted(coll_by_asset)
        )
    repay = max((r.max_repay_value for r in repays), default=ZERO)
    return Health(
        status=tier,
        factor=factor,
        collateral_value=coll,
        weighted_collateral=weighted,
        debt_value=debt,
        borrow_capacity=borrow,
        price_drop_to_liquidation=drop,
        max_repay_value=repay,
        seizures=seizures,
        prices=used,
        evaluated_at=now,
        repays=repays,
    )


class Evaluator:
    """`evaluate` for many accounts of one pass (same parameters, prices, config, time).

    What every account of a pass shares is worked out once per asset: whether its price
    is usable, its threshold, ltv and price, and `10**-decimals x price` (exact), so one
    position costs two multiplications for its values. Every result equals `evaluate`'s
    (the definition; tests/risk/test_fast_path.py compares them on random books, values
    on the tier bounds included): the sums are the same exact products added in the
    same order, and everything after the sums is `evaluate`'s own code.
    """

    def __init__(
        self,
        params: Mapping[str, RiskParams],
        prices: Mapping[str, Price],
        config: TierConfig,
        now: datetime,
    ) -> None:
        self.params = params
        self.prices = prices
        self.config = config
        self.now = now
        # (asset, decimals) -> (price, price per base unit, lt, ltv, usable, seizable)
        self._assets: dict[
            tuple[str, int], tuple[Decimal, Decimal, Decimal, Decimal, bool, bool]
        ] = {}

    def _asset(
        self, asset: str, decimals: int
    ) -> tuple[Decimal, Decimal, Decimal, Decimal, bool, bool]:
        got = self._assets.get((asset, decimals))
        if got is None:
            p = self.prices[asset]
            rp = self.params[asset]
            usable = usable_price_time(p.source_time, self.now, rp.max_price_age, self.config)
            unit = EXACT.multiply(ONE.scaleb(-decimals, EXACT), p.price)
            got = (
                p.price,
                unit,
                rp.liquidation_threshold,
                rp.ltv,
                usable,
                rp.liquidation_threshold > ZERO,
            )
            self._assets[(asset, decimals)] = got
        return got

    def evaluate(self, positions: Sequence[Position]) -> Health:
        prices = self.prices
        mul, add = EXACT.multiply, EXACT.add
        missing: list[str] = []
        stale: list[str] = []
        used: dict[str, Decimal] = {}
        coll = weighted = capacity = debt = ZERO
        coll_by_asset: dict[str, Decimal] = {}
        debt_by_asset: dict[str, Decimal] = {}
        for pos in positions:
            asset = pos.asset
            if asset not in prices:
                missing.append(asset)
                continue
            price, unit, lt, ltv, usable, seizable = self._asset(asset, pos.decimals)
            used[asset] = price
            if not usable:
                stale.append(asset)
            cv = mul(pos.collateral, unit)
            dv = mul(pos.debt, unit)
            coll = add(coll, cv)
            weighted = add(weighted, mul(cv, lt))
            capacity = add(capacity, mul(cv, ltv))
            debt = add(debt, dv)
            if pos.collateral > 0 and seizable:
                coll_by_asset[asset] = cv
            if pos.debt > 0:
                debt_by_asset[asset] = dv
        if missing or stale or len(used) < len(positions):
            # an unknown price (or a duplicate asset): the definition itself
            return evaluate(positions, self.params, prices, self.config, self.now)
        return _concluded(
            positions,
            self.params,
            prices,
            self.config,
            self.now,
            used,
            coll,
            weighted,
            max(ZERO, capacity - debt),
            debt,
            coll_by_asset,
            debt_by_asset,
        )


def usable_price_time(
    source_time: datetime, now: datetime, max_age: timedelta, config: TierConfig
) -> bool:
    """Not older than `max_age` and not further ahead of `now` than the allowed skew."""
    return now - max_age <= source_time <= now + config.max_future_skew


def _repay(pos: Position, price: Decimal, value: Decimal, close: Decimal) -> Repay:
    repay = EXACT.multiply(close, value)
    units = int(
        EXACT.divide(repay, price)
        .scaleb(pos.decimals, EXACT)
        .to_integral_value(decimal.ROUND_FLOOR)
    )
    return Repay(pos.asset, value, close, repay, min(units, pos.debt))


def _seizure(
    pos: Position,
    rp: RiskParams,
    price: Decimal,
    value: Decimal,
    repay: Decimal,
    debt_asset: str,
) -> Seizure:
    """Repaying `repay` of debt against this collateral yields repay x (1 + bonus) of it,
    capped by what the account holds (then the repayable amount shrinks accordingly)."""
    factor = ONE + rp.liquidation_bonus
    seize = min(EXACT.multiply(repay, factor), value)
    repay_here = ratio(seize, factor)
    units = int(
        EXACT.divide(seize, price)
        .scaleb(pos.decimals, EXACT)
        .to_integral_value(decimal.ROUND_FLOOR)
    )
    return Seizure(pos.asset, repay_here, seize, min(units, pos.collateral), debt_asset)


@dataclass(frozen=True)
class State:
    """What is remembered per account between evaluations (the hysteresis state)."""

    status: Tier | None = None  # None = never evaluated
    known_tier: Tier | None = None  # last ladder tier, kept through unknown_price episodes
    last_event_at: datetime | None = None
    last_snapshot_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """What an evaluation must cause: the new state, events and whether to snapshot."""

    state: State
    events: tuple[str, ...] = ()  # event types, in order
    from_tier: Tier | None = None
    to_tier: Tier | None = None
    snapshot: str | None = None  # reason: "tier_change" | "periodic" | None
    changed: bool = False

    @property
    def anything(self) -> bool:
        return self.changed or bool(self.events) or self.snapshot is not None


def decide(state: State, health: Health, config: TierConfig, now: datetime) -> Decision:
    """Apply hysteresis, one-event-per-episode for missing prices, reminders and snapshots."""
    events: list[str] = []
    snapshot: str | None = None
    if health.status is Tier.UNKNOWN_PRICE:
        if state.status is Tier.UNKNOWN_PRICE:
            return _periodic(state, config, now)
        new = State(Tier.UNKNOWN_PRICE, state.known_tier, now, now)
        return Decision(
            new,
            ("margin.price_unavailable",),
            state.known_tier,
            Tier.UNKNOWN_PRICE,
            "tier_change",
            True,
        )
    tier = with_hysteresis(state.known_tier, health.weighted_collateral, health.debt_value, config)
    last_event = state.last_event_at
    if tier != state.known_tier:
        if state.known_tier is not None or tier is not Tier.HEALTHY:
            events.append("margin.tier_changed")
            last_event = now
        snapshot = "tier_change"
    elif tier in ALERTING and (last_event is None or now - last_event >= config.reminder_interval):
        events.append("margin.reminder")
        last_event = now
    status_changed = state.status != tier
    if status_changed:
        snapshot = "tier_change"
    elif snapshot is None and _snapshot_due(state, config, now):
        snapshot = "periodic"
    new = State(tier, tier, last_event, now if snapshot else state.last_snapshot_at)
    return Decision(new, tuple(events), state.known_tier, tier, snapshot, new != state)


def _snapshot_due(state: State, config: TierConfig, now: datetime) -> bool:
    return (
        state.last_snapshot_at is None or now - state.last_snapshot_at >= config.snapshot_interval
    )


def _periodic(state: State, config: TierConfig, now: datetime) -> Decision:
    if _snapshot_due(state, config, now):
        new = State(state.status, state.known_tier, state.last_event_at, now)
        return Decision(new, (), state.known_tier, state.status, "periodic", True)
    return Decision(state)


def validate_positions(positions: Iterable[Position], known: Mapping[str, RiskParams]) -> list[str]:
    """Field-named problems (e.g. 'positions.2.asset: unknown asset DOGE'); empty = valid."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, p in enumerate(positions):
        where = f"positions.{i}"
        if p.asset not in known:
            problems.append(f"{where}.asset: unknown asset {p.asset}")
        elif known[p.asset].decimals not in (None, p.decimals):
            problems.append(f"{where}.decimals: {p.asset} has {known[p.asset].decimals} decimals")
        if p.asset in seen:
            problems.append(f"{where}.asset: duplicate asset {p.asset}")
        seen.add(p.asset)
        if p.collateral < 0:
            problems.append(f"{where}.collateral: must not be negative")
        if p.debt < 0:
            problems.append(f"{where}.debt: must not be negative")
        if p.collateral > MAX_UNITS or p.debt > MAX_UNITS:
            problems.append(f"{where}: amount exceeds 78 digits")
        if not 0 <= p.decimals <= MAX_DECIMALS:
            problems.append(f"{where}.decimals: must be in [0, {MAX_DECIMALS}]")
    return problems
