"""HTTP routes: thin wrappers that validate input and call the use cases in service.py."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.compliance import repository, service
from fusion_prime.compliance.domain import KycStatus
from fusion_prime.compliance.settings import ComplianceSettings
from fusion_prime.platform.auth import Caller, requires, signed_by
from fusion_prime.platform.database import database_now
from fusion_prime.platform.errors import InvalidError, UnauthorizedError
from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.runtime import RuntimeDep, Session
from fusion_prime.platform.signing import SignatureError, verify_header

router = APIRouter()
log = get_logger(__name__)

Text = Annotated[str, Field(min_length=1, max_length=200)]
Reason = Annotated[str, Field(min_length=1, max_length=2000)]
SIGNATURE_HEADER = "Persona-Signature"
MAX_CLOCK_SKEW_S = 300
# PostgreSQL bigint: a larger offset/sequence number is a 422, not a driver error (500)
PG_BIGINT_MAX = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _settings(runtime: Any) -> ComplianceSettings:
    settings = runtime.settings
    assert isinstance(settings, ComplianceSettings)
    return settings


def _cache(runtime: Any) -> service.SanctionsIndexCache:
    cache = runtime.state.get("sanctions_index")
    if cache is None:
        cache = runtime.state["sanctions_index"] = service.SanctionsIndexCache()
    assert isinstance(cache, service.SanctionsIndexCache)
    return cache


# -- KYC -----------------------------------------------------------------------------


DocumentKind = Literal[
    "passport", "national_id", "driving_licence", "residence_permit", "proof_of_address", "selfie"
]


class DocumentIn(_Strict):
    kind: DocumentKind
    reference: str = Field(
        min_length=1,
        max_length=2048,
        description="where the document lives (e.g. s3://bucket/key or a provider id); "
        "the image itself is never sent here",
    )
    issuing_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    mime_type: str | None = Field(default=None, max_length=100)

    @field_validator("reference")
    @classmethod
    def _reference_only(cls, value: str) -> str:
        if value.lower().startswith("data:"):
            raise ValueError("give a reference to the stored document, not its content")
        return value


class KycCaseIn(_Strict):
    user_id: Text
    documents: list[DocumentIn] = Field(default_factory=list, max_length=20)
    provider: Text | None = None
    provider_inquiry_id: Text | None = None


class TransitionIn(_Strict):
    to_status: KycStatus
    reason: Reason


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, description="retry-safe key"),
]


async def _idempotent(
    session: AsyncSession,
    endpoint: str,
    key: str | None,
    body: BaseModel,
    status_code: int,
    work: Callable[[], Awaitable[dict[str, Any]]],
) -> JSONResponse:
    """Run `work` once per key; a retry with the same key and body gets the same answer."""
    if key is None:
        return JSONResponse(jsonable_encoder(await work()), status_code=status_code)
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    stored = await repository.claim_idempotency_key(session, endpoint, key, digest)
    if stored is not None:
        if stored.request_sha256 != digest:
            raise InvalidError(
                "this Idempotency-Key was already used with a different request body",
                field="Idempotency-Key",
            )
        return JSONResponse(
            stored.response, status_code=stored.status_code, headers={"Idempotent-Replay": "true"}
        )
    result = jsonable_encoder(await work())
    await repository.store_idempotent_response(session, endpoint, key, status_code, result)
    return JSONResponse(result, status_code=status_code)


@router.post(
    "/kyc/cases",
    status_code=201,
    tags=["kyc"],
    response_model=None,
    dependencies=requires("operator"),
)
async def create_kyc_case(
    body: KycCaseIn, session: Session, caller: Caller, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    async def work() -> dict[str, Any]:
        return await service.create_kyc_case(
            session,
            user_id=body.user_id,
            documents=[service.DocumentRef(**d.model_dump()) for d in body.documents],
            actor=caller.actor,
            provider=body.provider,
            provider_inquiry_id=body.provider_inquiry_id,
        )

    return await _idempotent(session, "POST /kyc/cases", idempotency_key, body, 201, work)


@router.get("/kyc/cases", tags=["kyc"], dependencies=requires("viewer"))
async def list_kyc_cases(
    session: Session,
    status: KycStatus | None = None,
    user_id: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=PG_BIGINT_MAX),
) -> dict[str, Any]:
    """KYC cases, newest first, with the latest status change and who made it."""
    items = await service.list_kyc_cases(
        session,
        status=status.value if status else None,
        user_id=user_id,
        limit=limit,
        offset=offset,
    )
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/kyc/cases/{case_id}", tags=["kyc"], dependencies=requires("viewer"))
async def get_kyc_case(case_id: uuid.UUID, session: Session) -> dict[str, Any]:
    return await service.get_kyc_case(session, case_id)


@router.post(
    "/kyc/cases/{case_id}/transitions", tags=["kyc"], dependencies=requires("compliance_officer")
)
async def transition_kyc_case(
    case_id: uuid.UUID, body: TransitionIn, session: Session, caller: Caller
) -> dict[str, Any]:
    return await service.transition_kyc(
        session, case_id, body.to_status, actor=caller.actor, reason=body.reason
    )


class _InquiryAttributes(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    status: str | None = None
    reference_id: str | None = Field(default=None, alias="reference-id")


class _Inquiry(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    id: str = Field(min_length=1, max_length=200)
    attributes: _InquiryAttributes = Field(default_factory=_InquiryAttributes)


class _InquiryPayload(BaseModel):
    model_config = ConfigDict(extra="allow")
    data: _Inquiry


class _EventAttributes(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=200)
    payload: _InquiryPayload


class _EventData(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["event"]
    id: str = Field(min_length=1, max_length=200)
    attributes: _EventAttributes


class ProviderWebhook(BaseModel):
    model_config = ConfigDict(extra="allow")
    data: _EventData


@router.post(
    "/webhooks/kyc-provider",
    tags=["kyc"],
    dependencies=signed_by("KYC provider HMAC (Persona-Signature)"),
)
async def kyc_provider_webhook(
    request: Request, runtime: RuntimeDep, session: Session
) -> dict[str, Any]:
    """Persona-style inquiry events, authenticated before anything is parsed or stored."""
    settings = _settings(runtime)
    raw = await request.body()
    try:
        signed_at = verify_header(
            request.headers.get(SIGNATURE_HEADER),
            raw,
            settings.kyc_webhook_secret.get_secret_value(),
            # the database's clock: a compliance process whose own clock is minutes off
            # would refuse the provider's fresh requests (and accept stale ones)
            now=(await database_now(session)).timestamp(),
            tolerance=settings.kyc_webhook_tolerance_seconds,
        )
    except SignatureError as exc:
        service.WEBHOOK_EVENTS_TOTAL.labels(service.SERVICE, "unauthorized").inc()
        log.warning("kyc webhook refused", reason=str(exc))
        raise UnauthorizedError(f"webhook signature refused: {exc}") from None
    try:
        payload = json.loads(raw)
        event = ProviderWebhook.model_validate(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidError("body is not JSON", field="body") from exc
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        raise InvalidError(
            "webhook body is not an inquiry event: "
            + ", ".join(sorted({e["field"] for e in errors})),
            errors=errors,
        ) from None
    inquiry = event.data.attributes.payload.data
    return await service.handle_provider_event(
        session,
        service.ProviderEvent(
            event_id=event.data.id,
            name=event.data.attributes.name,
            inquiry_id=inquiry.id,
            reference_id=inquiry.attributes.reference_id,
            signed_at=datetime.fromtimestamp(signed_at, UTC),
        ),
        payload,
    )


# -- AML -----------------------------------------------------------------------------


class AmlScreenIn(_Strict):
    user_id: Text
    transaction_id: Text | None = Field(
        default=None, description="the caller's id; screening the same id again is idempotent"
    )
    amount: Decimal = Field(gt=0, max_digits=18, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    type: Literal["deposit", "withdrawal", "transfer_in", "transfer_out", "trade", "payment"]
    counterparties: list[Text] = Field(default_factory=list, max_length=20)
    addresses: list[Annotated[str, Field(min_length=4, max_length=128)]] = Field(
        default_factory=list, max_length=20
    )
    occurred_at: datetime

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError('give the amount as a decimal string, e.g. "9999.99"')
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must include a timezone offset")
        # a future-dated transaction would count in windows it has not reached yet
        if value.timestamp() > time.time() + MAX_CLOCK_SKEW_S:
            raise ValueError(f"is more than {MAX_CLOCK_SKEW_S} s in the future")
        return value


@router.post("/aml/screen", tags=["aml"], dependencies=requires("operator"))
async def aml_screen(body: AmlScreenIn, runtime: RuntimeDep, session: Session) -> dict[str, Any]:
    return await service.screen_transaction(
        session,
        _cache(runtime),
        service.TransactionIn(
            user_id=body.user_id,
            external_id=body.transaction_id,
            amount=body.amount,
            currency=body.currency,
            tx_type=body.type,
            counterparties=body.counterparties,
            addresses=body.addresses,
            occurred_at=body.occurred_at,
        ),
        _settings(runtime).sanctions_name_threshold,
    )


@router.get("/aml/rules", tags=["aml"], dependencies=requires("viewer"))
async def aml_rules(session: Session) -> dict[str, Any]:
    rules = await repository.current_rules(session)
    return {"version": rules.version, "rules": rules.to_json()}


# -- sanctions -----------------------------------------------------------------------


class SanctionsScreenIn(_Strict):
    names: list[Text] = Field(default_factory=list, max_length=50)
    addresses: list[Annotated[str, Field(min_length=4, max_length=128)]] = Field(
        default_factory=list, max_length=50
    )
    user_id: Text | None = None
    threshold: float | None = Field(default=None, ge=0.5, le=1.0)


@router.post(
    "/sanctions/screen", tags=["sanctions"], response_model=None, dependencies=requires("operator")
)
async def sanctions_screen(
    body: SanctionsScreenIn,
    runtime: RuntimeDep,
    session: Session,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    if not body.names and not body.addresses:
        raise InvalidError("give at least one name or address", field="names")
    configured = _settings(runtime).sanctions_name_threshold
    # a higher threshold finds fewer matches: a caller may ask for a more sensitive
    # screening, never a laxer one than the configured policy
    if body.threshold is not None and body.threshold > configured:
        raise InvalidError(
            f"threshold {body.threshold} is above the configured {configured}; "
            "a screening may only be made more sensitive (lower)",
            field="threshold",
        )

    async def work() -> dict[str, Any]:
        return await service.screen_sanctions(
            session,
            _cache(runtime),
            names=body.names,
            addresses=body.addresses,
            user_id=body.user_id,
            threshold=configured if body.threshold is None else body.threshold,
            actor=caller.actor,
        )

    return await _idempotent(session, "POST /sanctions/screen", idempotency_key, body, 200, work)


@router.get("/sanctions/lists", tags=["sanctions"], dependencies=requires("viewer"))
async def sanctions_lists(session: Session) -> dict[str, Any]:
    """Loaded list versions (load them with `fusion-prime compliance load-sanctions`)."""
    return {"items": await service.list_versions(session)}


# -- cases, status, audit ------------------------------------------------------------


class AssignIn(_Strict):
    assignee: Text


class ResolveIn(_Strict):
    resolution: Literal["cleared", "confirmed"]
    reason: Reason


@router.get("/sanctions/screenings", tags=["sanctions"], dependencies=requires("viewer"))
async def list_screenings(
    session: Session,
    status: Literal["hit", "clear"] | None = None,
    user_id: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=500),
) -> dict[str, Any]:
    """Screenings, newest first; `status=hit` lists the sanctions hits with candidates."""
    return {
        "items": await service.list_screenings(session, status=status, user_id=user_id, limit=limit)
    }


@router.get("/cases", tags=["cases"], dependencies=requires("viewer"))
async def list_cases(
    session: Session,
    status: Literal["open", "assigned", "resolved"] | None = None,
    kind: Literal["aml", "sanctions"] | None = None,
    user_id: str | None = Query(default=None, max_length=200),
    assignee: str | None = Query(default=None, max_length=200),
    level: Literal["low", "medium", "high"] | None = None,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=PG_BIGINT_MAX),
) -> dict[str, Any]:
    items = await service.list_cases(
        session,
        status=status,
        kind=kind,
        user_id=user_id,
        assignee=assignee,
        level=level,
        limit=limit,
        offset=offset,
    )
    return {"items": items, "limit": limit, "offset": offset}


@router.get("/cases/{case_id}", tags=["cases"], dependencies=requires("viewer"))
async def get_case(case_id: uuid.UUID, session: Session) -> dict[str, Any]:
    return await service.get_case(session, case_id)


@router.post("/cases/{case_id}/assign", tags=["cases"], dependencies=requires("compliance_officer"))
async def assign_case(
    case_id: uuid.UUID, body: AssignIn, session: Session, caller: Caller
) -> dict[str, Any]:
    return await service.assign_case(session, case_id, assignee=body.assignee, actor=caller.actor)


@router.post(
    "/cases/{case_id}/resolve", tags=["cases"], dependencies=requires("compliance_officer")
)
async def resolve_case(
    case_id: uuid.UUID, body: ResolveIn, session: Session, caller: Caller
) -> dict[str, Any]:
    return await service.resolve_case(
        session, case_id, resolution=body.resolution, reason=body.reason, actor=caller.actor
    )


@router.get("/users/{user_id}/compliance-status", tags=["status"], dependencies=requires("viewer"))
async def compliance_status(user_id: str, session: Session) -> dict[str, Any]:
    return await service.compliance_status(session, user_id)


@router.get("/audit", tags=["audit"], dependencies=requires("viewer"))
async def audit(
    session: Session,
    subject: str | None = Query(default=None, min_length=1, max_length=300),
    after_seq: int = Query(default=0, ge=0, le=PG_BIGINT_MAX),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    rows = await repository.audit_entries(session, subject, limit, after_seq)
    for r in rows:
        r["occurred_at"] = r["occurred_at"].astimezone(UTC).isoformat()
    return {"items": rows, "subject": subject}


@router.get("/audit/verify", tags=["audit"], dependencies=requires("viewer"))
async def audit_verify(session: Session) -> dict[str, Any]:
    """Whether the audit hash chain is intact, recomputed from every row now."""
    return await service.audit_chain_status(session)
