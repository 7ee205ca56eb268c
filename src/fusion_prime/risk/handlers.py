"""Consumers: prices from market.prices.v1, escrow exposure from settlement.events.v1.

Each runs inside the consumer's transaction, after the inbox claim (so a redelivered
event id is never applied twice). Price events are also idempotent by content: a price
whose source time is not newer than the stored one changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from prometheus_client import Counter
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import batch_handler
from fusion_prime.platform.observability import get_logger
from fusion_prime.risk import repository as repo
from fusion_prime.risk.domain import ASSET_RE
from fusion_prime.risk.service import apply_prices

log = get_logger(__name__)

PRICES_REJECTED = Counter(
    "fp_risk_prices_rejected_total", "Price events refused (recorded and skipped)", ["reason"]
)


class PriceUpdated(BaseModel):
    """`data` of a `price.updated` event: USD price of one whole unit of `asset`."""

    model_config = ConfigDict(extra="ignore")

    asset: str = Field(pattern=ASSET_RE.pattern)
    price: Decimal = Field(gt=0, description="decimal string, USD per whole unit")
    source: str = Field(min_length=1, max_length=200)
    source_time: datetime

    @field_validator("price", mode="before")
    @classmethod
    def _no_float(cls, v: object) -> object:
        if isinstance(v, float):
            raise ValueError("price must be a decimal string, not a JSON number")
        return v

    @field_validator("price")
    @classmethod
    def _finite(cls, v: Decimal) -> Decimal:
        if not v.is_finite():
            raise ValueError("price must be finite")
        return v

    @field_validator("source_time")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("source_time needs a timezone")
        return v


def _validation_reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'data'}: {err['msg']}" for err in exc.errors()
    )


@batch_handler
async def handle_prices(session: AsyncSession, envelopes: Sequence[Envelope]) -> None:
    """Apply a batch of prices; holders of every changed asset are re-evaluated once.

    A price that cannot be used (malformed, or stamped further ahead of our clock than the
    configured skew) is recorded in `price_rejections` and skipped, in the same
    transaction as its inbox claim. Retrying it could never succeed, and raising would
    hold back every later price of the asset while it was retried to the dead letters.
    """
    _, config = await repo.get_config(session)
    now = datetime.now(UTC)
    updates = []
    rejected: list[repo.PriceRejection] = []
    for e in envelopes:
        if e.type != "price.updated":
            continue
        try:
            p = PriceUpdated.model_validate(e.data)
        except ValidationError as exc:
            rejected.append(repo.PriceRejection.of(e, _validation_reason(exc), None))
            PRICES_REJECTED.labels("invalid").inc()
            continue
        if p.source_time > now + config.max_future_skew:
            reason = (
                f"source_time {p.source_time.isoformat()} is "
                f"{(p.source_time - now).total_seconds():.0f} s ahead of our clock "
                f"(allowed skew {config.max_future_skew.total_seconds():.0f} s)"
            )
            rejected.append(repo.PriceRejection.of(e, reason, p.source_time))
            PRICES_REJECTED.labels("future").inc()
            continue
        updates.append(repo.PriceUpdate(p.asset, p.price, p.source, p.source_time, e.id))
    if rejected:
        await repo.record_price_rejections(session, rejected)
        for r in rejected:
            log.warning("price refused", event_id=str(r.event_id), asset=r.asset, reason=r.reason)
    out = await apply_prices(session, updates)
    if out.events:
        log.info("margin events", count=len(out.events), evaluated=out.evaluated)


_HEX = re.compile(r"^0x[0-9a-fA-F]{40}$")
Units = Annotated[int, Field(ge=0)]


class EscrowEvent(BaseModel):
    """`data` of the escrow.* events we need (the indexer may send more fields)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    chain_id: int
    address: str = Field(validation_alias=AliasChoices("escrow", "escrow_address", "address"))
    block_number: int = Field(ge=0)
    log_index: int = Field(ge=0)
    payer: str | None = None
    payee: str | None = None
    amount: Units | None = None
    asset: str | None = None
    # the chain-event contract (settlement's validation) allows 0-77; a narrower bound here
    # dead-lettered deployments that settlement accepted
    decimals: int | None = Field(default=None, ge=0, le=77)

    @field_validator("amount", mode="before")
    @classmethod
    def _int_string(cls, v: object) -> object:
        # base units are exact: a JSON float may already have lost digits (settlement
        # refuses it the same way), so only ints and digit strings are accepted
        if isinstance(v, bool | float):
            raise ValueError("amount must be an integer in base units, never a float")
        if isinstance(v, str):
            if not v.isdigit():
                raise ValueError("amount must be a string of digits (base units)")
            return int(v)
        return v


_STATUS = {
    "escrow.deployed": "open",
    "escrow.approved": "approved",
    "escrow.released": "released",
    "escrow.refunded": "refunded",
    "escrow.arbiter_changed": None,
}


async def handle_escrow_events(session: AsyncSession, envelope: Envelope) -> None:
    """Keep per-party open escrow amounts (shown as exposure in the account view)."""
    if envelope.type not in _STATUS:
        return
    e = EscrowEvent.model_validate(envelope.data)
    await repo.apply_escrow(
        session,
        repo.EscrowChange(
            chain_id=e.chain_id,
            address=e.address.lower() if _HEX.match(e.address) else e.address,
            payer=e.payer,
            payee=e.payee,
            asset=e.asset,
            amount=e.amount,
            decimals=e.decimals,
            status=_STATUS[envelope.type],
            block=e.block_number,
            log_index=e.log_index,
        ),
    )
