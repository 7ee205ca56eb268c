"""HTTP API of the risk service (thin: parsing and rendering around service.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fusion_prime.platform.apitypes import DateTimeText
from fusion_prime.platform.auth import Caller, requires
from fusion_prime.platform.errors import InvalidError, NotFoundError
from fusion_prime.platform.runtime import RuntimeDep, Session
from fusion_prime.risk import repository as repo
from fusion_prime.risk import service
from fusion_prime.risk.domain import (
    ACCOUNT_ID_RE,
    ASSET_RE,
    MAX_DECIMALS,
    MAX_UNITS,
    Position,
    RiskParams,
    Tier,
    TierConfig,
)
from fusion_prime.risk.service import dec_str, health_json

router = APIRouter(tags=["risk"])

AccountId = Annotated[str, Path(pattern=ACCOUNT_ID_RE.pattern, max_length=128)]
AssetPath = Annotated[str, Path(pattern=ASSET_RE.pattern)]


def _units(v: object) -> object:
    """Integer base units as an int or a digit string; floats are refused (precision)."""
    if isinstance(v, bool) or isinstance(v, float):
        raise ValueError("must be an integer (or a string of digits), in base units")
    if isinstance(v, str):
        if not v.lstrip("-").isdigit():
            raise ValueError("must be an integer (or a string of digits), in base units")
        return int(v)
    return v


class PositionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    asset: str = Field(pattern=ASSET_RE.pattern)
    collateral: int = Field(default=0, ge=0, le=MAX_UNITS)
    debt: int = Field(default=0, ge=0, le=MAX_UNITS)
    decimals: int = Field(ge=0, le=MAX_DECIMALS)

    _c = field_validator("collateral", "debt", mode="before")(_units)


class PositionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    positions: list[PositionIn] = Field(max_length=500)


def _positions_json(ps: list[Position]) -> list[dict[str, Any]]:
    return [
        {
            "asset": p.asset,
            "collateral": str(p.collateral),
            "debt": str(p.debt),
            "decimals": p.decimals,
        }
        for p in ps
    ]


@router.put("/accounts/{account_id}/positions", dependencies=requires("operator"))
async def put_positions(
    account_id: AccountId, body: PositionsIn, session: Session
) -> dict[str, Any]:
    """Replace the account's positions (all of them, atomically) and return its health."""
    positions = [Position(p.asset, p.collateral, p.debt, p.decimals) for p in body.positions]
    await service.set_positions(session, [(account_id, positions)])
    health = await service.account_health(session, account_id)
    stored = (await repo.positions_of(session, [account_id]))[account_id]
    return {
        "account_id": account_id,
        "positions": _positions_json(stored),
        "health": health_json(health),
    }


@router.get("/accounts/{account_id}", dependencies=requires("viewer"))
async def get_account(account_id: AccountId, session: Session) -> dict[str, Any]:
    """Positions, stored status and open escrow exposure of an account."""
    exists = await repo.account_exists(session, account_id)
    exposure = await repo.escrow_exposure(session, account_id)
    if not exists and not exposure:
        raise NotFoundError(f"account {account_id} does not exist")
    positions = (await repo.positions_of(session, [account_id]))[account_id]
    state = await repo.state_row(session, account_id)
    sides: dict[str, list[dict[str, Any]]] = {"locked": [], "pending": []}
    for r in exposure:
        sides[r.side].append(
            {
                "asset": r.asset,
                "amount": str(int(r.amount)),
                "decimals": r.decimals,
                "escrows": r.escrows,
            }
        )
    return {
        "account_id": account_id,
        "positions": _positions_json(positions),
        "status": state.status if state else None,
        "factor": dec_str(state.factor) if state else None,
        "evaluated_at": state.evaluated_at.isoformat() if state else None,
        "escrow_exposure": sides,
    }


@router.get("/accounts/{account_id}/health", dependencies=requires("viewer"))
async def get_health(account_id: AccountId, session: Session) -> dict[str, Any]:
    """Live health from current positions and prices (factor null = infinite or unknown)."""
    health = await service.account_health(session, account_id)
    return {"account_id": account_id, **health_json(health)}


def _snapshot(r: Any) -> dict[str, Any]:
    return {
        "taken_at": r.taken_at.isoformat(),
        "reason": r.reason,
        "status": r.status,
        "factor": dec_str(r.factor),
        "collateral_value": dec_str(r.collateral_value),
        "weighted_collateral": dec_str(r.weighted_collateral),
        "debt_value": dec_str(r.debt_value),
        "borrow_capacity": dec_str(r.borrow_capacity),
        "prices": r.prices,
    }


def _event(r: Any) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "account_id": r.account_id,
        "type": r.event_type,
        "from_tier": r.from_tier,
        "to_tier": r.to_tier,
        "factor": dec_str(r.factor),
        "collateral_value": dec_str(r.collateral_value),
        "weighted_collateral": dec_str(r.weighted_collateral),
        "debt_value": dec_str(r.debt_value),
        "borrow_capacity": dec_str(r.borrow_capacity),
        "max_repay_value": dec_str(r.max_repay_value),
        "prices": r.prices,
        "created_at": r.created_at.isoformat(),
    }


Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/accounts/{account_id}/snapshots", dependencies=requires("viewer"))
async def get_snapshots(
    account_id: AccountId, session: Session, limit: Limit = 100
) -> dict[str, Any]:
    if not await repo.account_exists(session, account_id):
        raise NotFoundError(f"account {account_id} does not exist")
    rows = await repo.snapshots(session, account_id, limit)
    return {"account_id": account_id, "snapshots": [_snapshot(r) for r in rows]}


@router.get("/accounts/{account_id}/events", dependencies=requires("viewer"))
async def get_account_events(
    account_id: AccountId, session: Session, limit: Limit = 100
) -> dict[str, Any]:
    if not await repo.account_exists(session, account_id):
        raise NotFoundError(f"account {account_id} does not exist")
    rows = await repo.events(session, account_id=account_id, limit=limit)
    return {"account_id": account_id, "events": [_event(r) for r in rows]}


@router.get("/margin-events", dependencies=requires("viewer"))
async def list_margin_events(
    session: Session,
    tier: Tier | None = None,
    since: DateTimeText | None = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Margin events, newest first, optionally those moving *to* `tier` since a time."""
    if since is not None and since.tzinfo is None:
        raise InvalidError("since needs a timezone (e.g. 2026-01-01T00:00:00Z)", field="since")
    rows = await repo.events(session, tier=tier.value if tier else None, since=since, limit=limit)
    return {"events": [_event(r) for r in rows]}


@router.get("/stats", dependencies=requires("viewer"))
async def get_stats(session: Session, runtime: RuntimeDep) -> dict[str, Any]:
    """Accounts per status as of their last evaluation, and the book in memory: its size,
    load time, the last tick's evaluation and persistence times."""
    counts = await repo.counts(session)  # kept by triggers: no count over the tables
    book = runtime.state.get("book")
    return {
        "accounts": counts.get("accounts", 0),
        "accounts_with_positions": counts.get("accounts_with_positions", 0),
        "tiers": {t.value: counts.get(f"tier:{t.value}", 0) for t in Tier},
        "book": book.stats() if book is not None else {"mode": "sql"},
    }


@router.get("/book/accounts/{account_id}", dependencies=requires("viewer"))
async def get_book_account(account_id: AccountId, runtime: RuntimeDep) -> dict[str, Any]:
    """What the book in memory holds for an account (float sums and factor, the stored
    decision it filters against): for checking the book against the tables."""
    book = runtime.state.get("book")
    if book is None:
        raise NotFoundError("this instance keeps no book in memory (RISK_BOOK=sql)")
    view = book.account_view(account_id)
    if view is None:
        raise NotFoundError(f"account {account_id} is not in the book")
    return dict(view)


# -- risk parameters ---------------------------------------------------------------------

Fraction = Annotated[Decimal, Field(ge=0, le=1, max_digits=20, decimal_places=18)]


class RiskParamsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ltv: Fraction
    liquidation_threshold: Fraction
    liquidation_bonus: Fraction
    max_price_age_seconds: int = Field(gt=0, le=7 * 86400)
    decimals: int = Field(ge=0, le=MAX_DECIMALS, description="base-unit decimals of the asset")


def _params_json(rp: RiskParams, created_at: datetime | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "asset": rp.asset,
        "version": rp.version,
        "ltv": dec_str(rp.ltv),
        "liquidation_threshold": dec_str(rp.liquidation_threshold),
        "liquidation_bonus": dec_str(rp.liquidation_bonus),
        "max_price_age_seconds": int(rp.max_price_age.total_seconds()),
        "decimals": rp.decimals,
    }
    if created_at is not None:
        out["created_at"] = created_at.isoformat()
    return out


@router.get("/risk-parameters", dependencies=requires("viewer"))
async def list_params(session: Session) -> dict[str, Any]:
    params = await repo.current_params(session)
    return {"assets": [_params_json(p) for _, p in sorted(params.items())]}


@router.get("/risk-parameters/{asset}", dependencies=requires("viewer"))
async def get_params(asset: AssetPath, session: Session) -> dict[str, Any]:
    versions = await repo.param_versions(session, asset)
    if not versions:
        raise NotFoundError(f"asset {asset} has no risk parameters")
    return {
        "asset": asset,
        "current": _params_json(*versions[0]),
        "versions": [_params_json(p, at) for p, at in versions],
    }


@router.put("/risk-parameters/{asset}", status_code=201, dependencies=requires("risk_manager"))
async def put_params(
    asset: AssetPath, body: RiskParamsIn, session: Session, caller: Caller
) -> dict[str, Any]:
    """Add a new version of the asset's parameters (older versions stay as they were)."""
    if body.ltv > body.liquidation_threshold:
        raise InvalidError("ltv must not exceed liquidation_threshold", field="ltv")
    rp = RiskParams(
        asset,
        body.ltv,
        body.liquidation_threshold,
        body.liquidation_bonus,
        timedelta(seconds=body.max_price_age_seconds),
        decimals=body.decimals,
    )
    return _params_json(await service.put_params(session, rp, created_by=caller.actor))


MAX_INTERVAL_SECONDS = 10 * 366 * 86_400


class ConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    healthy: Decimal = Field(gt=0, le=100)
    warning: Decimal = Field(gt=0, le=100)
    margin_call: Decimal = Field(gt=0, le=100)
    hysteresis: Decimal = Field(ge=0, le=1)
    # bounded: a larger value overflowed timedelta (a 500); ten years is plenty
    reminder_interval_seconds: int = Field(gt=0, le=MAX_INTERVAL_SECONDS)
    snapshot_interval_seconds: int = Field(gt=0, le=MAX_INTERVAL_SECONDS)
    close_factor: Decimal = Field(default=Decimal("0.5"), gt=0, le=1)
    full_close_below: Decimal = Field(default=Decimal("0.95"), gt=0, le=1)
    max_future_skew_seconds: int = Field(default=60, ge=0, le=3600)


def _config_json(version: int, c: TierConfig) -> dict[str, Any]:
    return {
        "version": version,
        "healthy": dec_str(c.healthy),
        "warning": dec_str(c.warning),
        "margin_call": dec_str(c.margin_call),
        "hysteresis": dec_str(c.hysteresis),
        "reminder_interval_seconds": int(c.reminder_interval.total_seconds()),
        "snapshot_interval_seconds": int(c.snapshot_interval.total_seconds()),
        "close_factor": dec_str(c.close_factor),
        "full_close_below": dec_str(c.full_close_below),
        "max_future_skew_seconds": int(c.max_future_skew.total_seconds()),
    }


@router.get("/config", dependencies=requires("viewer"))
async def get_config(session: Session) -> dict[str, Any]:
    version, cfg = await repo.get_config(session)
    return _config_json(version, cfg)


@router.put("/config", dependencies=requires("risk_manager"))
async def put_config(body: ConfigIn, session: Session, caller: Caller) -> dict[str, Any]:
    """Tier bounds, hysteresis and intervals (a new version; accounts re-evaluated)."""
    if not (body.healthy > body.warning > body.margin_call):
        raise InvalidError("need healthy > warning > margin_call", field="warning")
    cfg = TierConfig(
        healthy=body.healthy,
        warning=body.warning,
        margin_call=body.margin_call,
        hysteresis=body.hysteresis,
        reminder_interval=timedelta(seconds=body.reminder_interval_seconds),
        snapshot_interval=timedelta(seconds=body.snapshot_interval_seconds),
        close_factor=body.close_factor,
        full_close_below=body.full_close_below,
        max_future_skew=timedelta(seconds=body.max_future_skew_seconds),
    )
    version = await service.put_config(session, cfg, created_by=caller.actor)
    return _config_json(version, cfg)
