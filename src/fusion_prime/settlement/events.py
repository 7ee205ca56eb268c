"""The data of chain events on `settlement.events.v1`, validated before anything is applied.

An event that does not validate raises `InvalidChainEvent`: the consumer lets it propagate
so the bus retries and finally dead-letters it; it is never silently dropped.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.settlement import domain
from fusion_prime.settlement.domain import ChainEvent, ChainRef

Address = Annotated[str, BeforeValidator(domain.normalise_address)]
TxHash = Annotated[str, BeforeValidator(domain.normalise_tx_hash)]
BaseUnits = Annotated[int, BeforeValidator(domain.parse_base_units)]


class InvalidChainEvent(ValueError):
    """A chain event whose envelope or data cannot be understood."""


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    chain_id: int = Field(gt=0, strict=True)
    tx_hash: TxHash
    log_index: int = Field(ge=0, strict=True)
    block_number: int = Field(ge=0, strict=True)
    escrow: Address = Field(validation_alias=AliasChoices("escrow", "escrow_address"))
    # the command id a transaction of ours carries back (the signer echoes it)
    correlation_id: uuid.UUID | None = None

    @property
    def correlation(self) -> str | None:
        return str(self.correlation_id) if self.correlation_id is not None else None

    def ref(self) -> ChainRef:
        return ChainRef(self.block_number, self.log_index, self.chain_id, self.tx_hash)


class DeployedData(_Common):
    payer: Address
    payee: Address
    arbiter: Address
    asset: Address
    decimals: int = Field(ge=0, le=77, strict=True)
    amount: BaseUnits
    release_delay: int = Field(ge=0, strict=True)
    approvals_required: int = Field(ge=1, le=3, strict=True)


class ApprovedData(_Common):
    approver: Address


class ReleasedData(_Common):
    pass


class RefundedData(_Common):
    pass


class ArbiterChangedData(_Common):
    new_arbiter: Address


class DisputedData(_Common):
    disputed_by: Address


MODELS: dict[str, type[_Common]] = {
    domain.DEPLOYED: DeployedData,
    domain.APPROVED: ApprovedData,
    domain.RELEASED: ReleasedData,
    domain.REFUNDED: RefundedData,
    domain.ARBITER_CHANGED: ArbiterChangedData,
    domain.DISPUTED: DisputedData,
}


def parse_data(event_type: str, data: dict[str, Any]) -> ChainEvent:
    """Validate one event's data and turn it into a domain event."""
    model = MODELS.get(event_type)
    if model is None:
        raise InvalidChainEvent(f"unknown chain event type {event_type!r}")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidChainEvent(f"invalid {event_type} data: {fields}") from exc
    ref = parsed.ref()
    if isinstance(parsed, DeployedData):
        return domain.Deployed(
            ref,
            parsed.escrow,
            parsed.payer,
            parsed.payee,
            parsed.arbiter,
            parsed.asset,
            parsed.decimals,
            parsed.amount,
            parsed.release_delay,
            parsed.approvals_required,
            correlation_id=parsed.correlation,
        )
    if isinstance(parsed, ApprovedData):
        return domain.Approved(
            ref, parsed.escrow, parsed.approver, correlation_id=parsed.correlation
        )
    if isinstance(parsed, ArbiterChangedData):
        return domain.ArbiterChanged(
            ref, parsed.escrow, parsed.new_arbiter, correlation_id=parsed.correlation
        )
    if isinstance(parsed, DisputedData):
        return domain.Disputed(
            ref, parsed.escrow, parsed.disputed_by, correlation_id=parsed.correlation
        )
    if isinstance(parsed, ReleasedData):
        return domain.Released(ref, parsed.escrow, correlation_id=parsed.correlation)
    return domain.Refunded(ref, parsed.escrow, correlation_id=parsed.correlation)


def parse_envelope(envelope: Envelope) -> ChainEvent:
    return parse_data(envelope.type, envelope.data)


def event_data(event: ChainEvent) -> dict[str, Any]:
    """The normalised data of a domain event (what is stored and re-parsed from parking)."""
    ref = event.ref
    data: dict[str, Any] = {
        "chain_id": ref.chain_id,
        "tx_hash": ref.tx_hash,
        "log_index": ref.log_index,
        "block_number": ref.block_number,
        "escrow": event.escrow,
    }
    if isinstance(event, domain.Deployed):
        data.update(
            payer=event.payer,
            payee=event.payee,
            arbiter=event.arbiter,
            asset=event.asset,
            decimals=event.decimals,
            amount=str(event.amount),
            release_delay=event.release_delay,
            approvals_required=event.approvals_required,
        )
    elif isinstance(event, domain.Approved):
        data["approver"] = event.approver
    elif isinstance(event, domain.ArbiterChanged):
        data["new_arbiter"] = event.new_arbiter
    if event.correlation_id is not None:
        data["correlation_id"] = event.correlation_id
    return data
