"""HTTP API of the settlement service: thin routers over service/repository/webhooks."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from cryptography.fernet import MultiFernet
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

from fusion_prime.platform.auth import Caller, requires
from fusion_prime.platform.errors import ConflictError, InvalidError, NotFoundError
from fusion_prime.platform.runtime import Runtime, RuntimeDep, Session, get_runtime
from fusion_prime.platform.targets import TargetPolicy, UnsafeTargetError, check_target
from fusion_prime.settlement import domain, repository, service, webhooks
from fusion_prime.settlement.settings import SettlementSettings

router = APIRouter(tags=["settlement"])


READ_POOL = "read_pool"


Address = Annotated[str, BeforeValidator(domain.normalise_address)]
BaseUnits = Annotated[
    int, BeforeValidator(domain.parse_base_units), PlainSerializer(str, return_type=str)
]
Reference = Annotated[str | None, Field(default=None, max_length=200)]
# the columns are PostgreSQL bigint: a larger value is the client's 422, not a driver 500
BIGINT_MAX = 2**63 - 1


def _address_param(value: str, field: str) -> str:
    try:
        return domain.normalise_address(value)
    except ValueError as exc:
        raise InvalidError(f"{field}: {exc}", field=field) from None


# -- commands -------------------------------------------------------------------------


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: Reference


class CreateEscrowCommand(_Command):
    action: Literal["create_escrow"]
    chain_id: int = Field(gt=0, le=BIGINT_MAX)
    payer: Address
    payee: Address
    arbiter: Address
    asset: str = Field(min_length=1, max_length=64, description="asset address or symbol")
    amount: BaseUnits
    approvals_required: int = Field(ge=1, le=3)
    release_delay: int = Field(default=0, ge=0, le=BIGINT_MAX, description="seconds")


class _EscrowCommand(_Command):
    escrow_address: Address
    chain_id: int | None = Field(default=None, gt=0, le=BIGINT_MAX)


class ReleaseCommand(_EscrowCommand):
    action: Literal["release"]


class RefundCommand(_EscrowCommand):
    action: Literal["refund"]


class ApproveCommand(_EscrowCommand):
    action: Literal["approve"]
    approver: Address


class ChangeArbiterCommand(_EscrowCommand):
    action: Literal["change_arbiter"]
    new_arbiter: Address


CommandIn = Annotated[
    CreateEscrowCommand | ReleaseCommand | RefundCommand | ApproveCommand | ChangeArbiterCommand,
    Field(discriminator="action"),
]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            # integer base units: plain digits, never 1.00E+6
            out[key] = format(value, "f")
        elif isinstance(value, uuid.UUID):
            out[key] = str(value)
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


@router.post("/commands", status_code=201, dependencies=requires("operator"))
async def create_command(
    command: CommandIn,
    session: Session,
    response: Response,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
    caller: Caller,
) -> dict[str, Any]:
    """Accept a settlement command once per Idempotency-Key (same body: same answer).

    Who asked is the authenticated key (`requested_by`), never a field of the body."""
    body = command.model_dump(mode="json")
    row, created = await service.create_command(
        session, idempotency_key, body, requested_by=caller.actor
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return _jsonable(row)


@router.get("/commands/{command_id}", dependencies=requires("viewer"))
async def get_command(command_id: uuid.UUID, session: Session) -> dict[str, Any]:
    return _jsonable(await service.get_command(session, command_id))


# -- escrows --------------------------------------------------------------------------


def _escrow_out(row: dict[str, Any]) -> dict[str, Any]:
    out = _jsonable(row)
    out.pop("seq", None)
    amount = Decimal(int(row["amount"]))
    out["amount_display"] = format(amount.scaleb(-int(row["asset_decimals"])), "f")
    return out


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"s": seq}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        seq = json.loads(raw)["s"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidError("cursor is not a cursor this API returned", field="cursor") from None
    if not isinstance(seq, int) or seq < 0:
        raise InvalidError("cursor is not a cursor this API returned", field="cursor")
    return seq


@router.get("/escrows", dependencies=requires("viewer"))
async def list_escrows(
    session: Session,
    payer: str | None = None,
    payee: str | None = None,
    status: Literal["created", "approved", "disputed", "released", "refunded"] | None = None,
    chain_id: Annotated[int | None, Query(gt=0, le=BIGINT_MAX)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Escrows in a stable order with an opaque cursor; no filter lists all."""
    rows = await repository.list_escrows(
        session,
        payer=_address_param(payer, "payer") if payer is not None else None,
        payee=_address_param(payee, "payee") if payee is not None else None,
        status=status,
        chain_id=chain_id,
        after_seq=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_escrow_out(r) for r in rows],
        "next_cursor": _encode_cursor(rows[-1]["seq"]) if more else None,
    }


@router.get("/escrows/{address}", dependencies=requires("viewer"))
async def get_escrow(address: str, request: Request) -> JSONResponse:
    """One statement, no transaction needed: read through the plain asyncpg pool.

    Deliberately no dependencies: FastAPI runs sync ones in a thread pool, which costs
    more than the query on this hot path.
    """
    normalised = _address_param(address, "address")
    runtime = get_runtime(request)
    pool = runtime.state.get(READ_POOL)
    if pool is not None:
        row = await repository.get_escrow_fast(pool, normalised)
    else:
        async with runtime.sessions() as session:
            row = await repository.get_escrow(session, normalised)
    if row is None:
        raise NotFoundError(f"escrow {normalised} does not exist")
    # already JSON-ready: skip FastAPI's generic encoder on the hottest read
    return JSONResponse(_escrow_out(row))


@router.get("/escrows/{address}/history", dependencies=requires("viewer"))
async def escrow_history(
    address: str, session: Session, include_superseded: bool = False
) -> dict[str, Any]:
    """The applied events in chain order; `include_superseded` also lists the rows a late
    event's re-fold replaced (kept, never rewritten)."""
    normalised = _address_param(address, "address")
    rows = await repository.history(session, normalised, include_superseded=include_superseded)
    # a deployed escrow always has its deployment row: the existence check is for misses only
    if not rows and not await repository.escrow_exists(session, normalised):
        raise NotFoundError(f"escrow {normalised} does not exist")
    return {"address": normalised, "items": [_jsonable(r) for r in rows]}


@router.get("/escrows/{address}/anomalies", dependencies=requires("viewer"))
async def escrow_anomalies(
    address: str, session: Session, include_superseded: bool = False
) -> dict[str, Any]:
    """Chain events about this escrow that were recorded but not applied, and why.

    Answers for addresses not deployed yet too: a conflict can be known before the escrow.
    """
    normalised = _address_param(address, "address")
    rows = await repository.anomalies(session, normalised, include_superseded=include_superseded)
    if not rows and not await repository.escrow_exists(session, normalised):
        raise NotFoundError(f"escrow {normalised} does not exist and has no anomalies")
    return {"address": normalised, "items": [_jsonable(r) for r in rows]}


# -- assets ---------------------------------------------------------------------------


class AssetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chain_id: int = Field(gt=0, le=BIGINT_MAX)
    address: Address
    symbol: str = Field(pattern=r"^[A-Za-z0-9.]{1,16}$")
    decimals: int = Field(ge=0, le=77)


@router.get("/assets", dependencies=requires("viewer"))
async def list_assets(session: Session) -> dict[str, Any]:
    return {"items": [_jsonable(r) for r in await repository.list_assets(session)]}


@router.post("/assets", status_code=201, dependencies=requires("operator"))
async def create_asset(asset: AssetIn, session: Session) -> dict[str, Any]:
    row = await repository.insert_asset(
        session, asset.chain_id, asset.address, asset.symbol, asset.decimals
    )
    if row is None:
        raise ConflictError(
            f"chain {asset.chain_id} already has an asset at {asset.address} or named "
            f"{asset.symbol}"
        )
    return _jsonable(row)


# -- webhooks -------------------------------------------------------------------------

WebhookType = Literal[
    "escrow.created", "escrow.approved", "escrow.disputed", "escrow.released", "escrow.refunded"
]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: AnyHttpUrl
    event_types: list[WebhookType] = Field(
        min_length=1, max_length=len(service.WEBHOOK_EVENT_TYPES)
    )

    @field_validator("event_types")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat an event type")
        return value


def _fernet(runtime: Runtime) -> MultiFernet:
    fernet = runtime.state.get("webhook_fernet")
    if fernet is None:
        settings = runtime.settings
        assert isinstance(settings, SettlementSettings)
        fernet = webhooks.settings_cipher(settings)
        runtime.state["webhook_fernet"] = fernet
    assert isinstance(fernet, MultiFernet)
    return fernet


@router.post("/webhooks", status_code=201, dependencies=requires("operator"))
async def create_webhook(
    webhook: WebhookIn, session: Session, runtime: RuntimeDep
) -> dict[str, Any]:
    """Register an endpoint. The signing secret is in this response and never again."""
    try:  # https, no credentials, a public address (checked again at every delivery)
        await check_target(str(webhook.url), TargetPolicy.from_settings(runtime.settings))
    except UnsafeTargetError as exc:
        raise InvalidError(f"url: {exc}", field="url") from None
    row, secret = await webhooks.create_endpoint(
        session, _fernet(runtime), str(webhook.url), webhook.event_types
    )
    return {**_jsonable(row), "secret": secret}


@router.get("/webhooks/{webhook_id}", dependencies=requires("viewer"))
async def get_webhook(webhook_id: uuid.UUID, session: Session) -> dict[str, Any]:
    return _jsonable(await webhooks.get_endpoint(session, webhook_id))


@router.post("/webhooks/{webhook_id}/enable", dependencies=requires("operator"))
async def enable_webhook(webhook_id: uuid.UUID, session: Session) -> dict[str, Any]:
    return _jsonable(await webhooks.enable_endpoint(session, webhook_id))


@router.get("/webhooks/{webhook_id}/deliveries", dependencies=requires("viewer"))
async def webhook_deliveries(
    webhook_id: uuid.UUID,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    rows = await webhooks.list_deliveries(session, webhook_id, limit)
    return {"webhook_id": str(webhook_id), "items": [_jsonable(r) for r in rows]}
