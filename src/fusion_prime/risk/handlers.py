"""Consumers: prices from market.prices.v1, escrow exposure from settlement.events.v1.

Each runs inside the consumer's transaction, after the inbox claim (so a redelivered
event id is never applied twice). Price events are also idempotent by content: a price
whose source time is not newer than the stored one changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from prometheus_client import Counter
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import batch_handler
from fusion_prime.platform.database import database_now
from fusion_prime.platform.observability import get_logger
from fusion_prime.risk import repository as repo
from fusion_prime.risk.domain import ASSET_RE
from fusion_prime.risk.service import apply_prices
from fusion_prime.settlement import domain as rules

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
    # the database's clock, not this process's: a process minutes behind would refuse
    # every fresh price as "from the future" (and record it as rejected, for good)
    now = await database_now(session)
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


def _addr(value: str | None) -> str | None:
    """Hex addresses compare lowercase (settlement stores them so); others as given."""
    return value.lower() if value is not None and _HEX.match(value) else value


class EscrowEvent(BaseModel):
    """`data` of the escrow.* events we need (the indexer may send more fields)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    chain_id: int
    address: str = Field(validation_alias=AliasChoices("escrow", "escrow_address", "address"))
    block_number: int = Field(ge=0)
    log_index: int = Field(ge=0)
    tx_hash: str = ""
    payer: str | None = None
    payee: str | None = None
    arbiter: str | None = None
    amount: Units | None = None
    asset: str | None = None
    # the chain-event contract (settlement's validation) allows 0-77; a narrower bound here
    # dead-lettered deployments that settlement accepted
    decimals: int | None = Field(default=None, ge=0, le=77)
    # settlement's contract: 1-3 distinct approvals (payer, payee, arbiter) release it
    approvals_required: int | None = Field(default=None, ge=1, le=3)
    release_delay: int = Field(default=0, ge=0)
    approver: str | None = None
    new_arbiter: str | None = None

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

    def chain_event(self, event_type: str) -> rules.ChainEvent:
        """The event in settlement's rule terms; what settlement would refuse, we refuse."""
        ref = rules.ChainRef(self.block_number, self.log_index, self.chain_id, self.tx_hash)
        escrow = _addr(self.address) or self.address
        if event_type == rules.DEPLOYED:
            missing = [
                name
                for name in ("payer", "payee", "arbiter", "amount", "asset", "decimals")
                if getattr(self, name) is None
            ]
            if self.approvals_required is None:
                missing.append("approvals_required")
            if missing:
                raise ValueError(f"escrow.deployed without {', '.join(missing)}")
            return rules.Deployed(
                ref,
                escrow,
                _addr(self.payer) or "",
                _addr(self.payee) or "",
                _addr(self.arbiter) or "",
                self.asset or "",
                self.decimals or 0,
                self.amount or 0,
                self.release_delay,
                self.approvals_required or 1,
            )
        if event_type == rules.APPROVED:
            if self.approver is None:
                raise ValueError("escrow.approved without approver")
            return rules.Approved(ref, escrow, _addr(self.approver) or "")
        if event_type == rules.ARBITER_CHANGED:
            if self.new_arbiter is None:
                raise ValueError("escrow.arbiter_changed without new_arbiter")
            return rules.ArbiterChanged(ref, escrow, _addr(self.new_arbiter) or "")
        if event_type == rules.RELEASED:
            return rules.Released(ref, escrow)
        return rules.Refunded(ref, escrow)


async def handle_escrow_events(session: AsyncSession, envelope: Envelope) -> None:
    """Keep per-party open escrow amounts (shown as exposure in the account view).

    The status follows settlement's own rule, not the event's name: an approval counts
    only from the payer, payee or current arbiter, once each, and the escrow is approved
    when `approvals_required` of them are in (an arbiter change can take it back). The
    escrow's events are folded in chain order with settlement's `fold`, so late or
    reordered deliveries give the same state settlement has.
    """
    if envelope.type not in rules.EVENT_TYPES:
        return
    e = EscrowEvent.model_validate(envelope.data)
    e.chain_event(envelope.type)  # refuse what settlement would refuse, before storing
    address = _addr(e.address) or e.address
    history = await repo.record_escrow_event(
        session, e.chain_id, address, e.block_number, e.log_index, envelope.type, envelope.data
    )
    state, _ = rules.fold(None, [EscrowEvent.model_validate(d).chain_event(t) for t, d in history])
    if state is not None:
        await repo.store_escrow(session, state)
