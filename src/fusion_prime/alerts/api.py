"""HTTP API of the alert service (thin: parsing and rendering around service.py)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from fusion_prime.alerts import repository as repo
from fusion_prime.alerts import service
from fusion_prime.alerts.channels.sms import verify_status
from fusion_prime.alerts.delivery import contact_cipher, failover, send_test
from fusion_prime.alerts.domain import ACCOUNT_ID_RE, Channel, Kind, Preferences, Status
from fusion_prime.alerts.settings import AlertsSettings
from fusion_prime.platform.apitypes import AwareDateTimeText, TimeText
from fusion_prime.platform.auth import requires, signed_by
from fusion_prime.platform.errors import (
    ConflictError,
    InvalidError,
    NotFoundError,
    UnauthorizedError,
)
from fusion_prime.platform.runtime import RuntimeDep, Session
from fusion_prime.platform.targets import TargetPolicy, UnsafeTargetError, check_target

router = APIRouter(tags=["alerts"])

AccountId = Annotated[str, Path(pattern=ACCOUNT_ID_RE.pattern, max_length=128)]


def _settings(runtime: RuntimeDep) -> AlertsSettings:
    s = runtime.settings
    assert isinstance(s, AlertsSettings)
    return s


# -- preferences -----------------------------------------------------------------------


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: TimeText
    end: TimeText


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("must not repeat a value")
    return values


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: list[Kind] = Field(min_length=1)
    channels: list[Channel] = Field(min_length=1, description="in the order they are used")
    recipients: list[uuid.UUID] | None = Field(
        default=None, description="contact ids; null: every contact of the account"
    )
    quiet_hours: QuietHours | None = None
    quiet_hours_bypass: list[Kind] = Field(default_factory=lambda: [Kind.LIQUIDATION])
    # strict: JSON `false` is not 0 seconds (schemathesis found it accepted)
    min_interval_seconds: dict[Kind, Annotated[StrictInt, Field(ge=0, le=7 * 86_400)]] = Field(
        default_factory=dict
    )
    dedupe_window_seconds: StrictInt | None = Field(default=None, ge=0, le=86_400)

    _u = field_validator("kinds", "channels", "recipients", "quiet_hours_bypass")(
        lambda v: None if v is None else _unique(v)
    )


def _prefs_json(p: Preferences) -> dict[str, Any]:
    return {
        "account_id": p.account_id,
        "kinds": sorted(k.value for k in p.kinds),
        "channels": [c.value for c in p.channels],
        "recipients": [str(r) for r in p.recipients] if p.recipients is not None else None,
        "quiet_hours": (
            {"start": p.quiet_start.isoformat(), "end": p.quiet_end.isoformat()}
            if p.quiet_start is not None and p.quiet_end is not None
            else None
        ),
        "quiet_hours_bypass": sorted(k.value for k in p.quiet_bypass),
        "min_interval_seconds": dict(p.min_interval),
        "dedupe_window_seconds": p.dedupe_window,
    }


@router.put("/accounts/{account_id}/preferences", dependencies=requires("operator"))
async def put_preferences(
    account_id: AccountId, body: PreferencesIn, session: Session
) -> dict[str, Any]:
    prefs = Preferences(
        account_id=account_id,
        kinds=frozenset(body.kinds),
        channels=tuple(body.channels),
        recipients=tuple(body.recipients) if body.recipients is not None else None,
        quiet_start=body.quiet_hours.start if body.quiet_hours else None,
        quiet_end=body.quiet_hours.end if body.quiet_hours else None,
        quiet_bypass=frozenset(body.quiet_hours_bypass),
        min_interval={k.value: float(v) for k, v in body.min_interval_seconds.items()},
        dedupe_window=(
            float(body.dedupe_window_seconds) if body.dedupe_window_seconds is not None else None
        ),
    )
    return _prefs_json(await service.put_preferences(session, prefs))


@router.get("/accounts/{account_id}/preferences", dependencies=requires("viewer"))
async def get_preferences(account_id: AccountId, session: Session) -> dict[str, Any]:
    return _prefs_json(await service.get_preferences(session, account_id))


# -- contacts ----------------------------------------------------------------------------


class EndpointModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    address: str = Field(min_length=1, max_length=2000)


class ContactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_id: str = Field(pattern=ACCOUNT_ID_RE.pattern, max_length=128)
    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    channels: list[EndpointModel] = Field(
        min_length=1, max_length=4, description="in failover order"
    )


def _contact_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "account_id": row["account_id"],
        "name": row["name"],
        "timezone": row["timezone"],
        "channels": [{"channel": c["channel"], "address": c["address"]} for c in row["channels"]],
        "created_at": row["created_at"].isoformat(),
    }


@router.post("/contacts", status_code=201, dependencies=requires("operator"))
async def create_contact(body: ContactIn, session: Session, runtime: RuntimeDep) -> dict[str, Any]:
    settings = _settings(runtime)
    policy = TargetPolicy.from_settings(settings)
    for i, c in enumerate(body.channels):
        if c.channel in (Channel.WEBHOOK, Channel.SLACK):
            try:  # where we will POST to: https, no credentials, a public address
                await check_target(c.address, policy)
            except UnsafeTargetError as exc:
                raise InvalidError(
                    f"channels.{i}.address: {exc}", field=f"channels.{i}.address"
                ) from None
    row, secret = await service.create_contact(
        session,
        contact_cipher(settings),
        account_id=body.account_id,
        name=body.name,
        timezone=body.timezone,
        channels=[service.EndpointIn(c.channel, c.address) for c in body.channels],
        allow_http=policy.allow_http,
    )
    out = _contact_json(row)
    if secret is not None:
        out["webhook_signing_secret"] = secret  # shown once; stored encrypted
    return out


@router.get("/contacts", dependencies=requires("viewer"))
async def list_contacts(
    session: Session,
    account: Annotated[str, Query(pattern=ACCOUNT_ID_RE.pattern, max_length=128)],
) -> dict[str, Any]:
    rows = await repo.contact_rows(session, account_id=account)
    return {"items": [_contact_json(r) for r in rows]}


@router.get("/contacts/{contact_id}", dependencies=requires("viewer"))
async def get_contact(contact_id: uuid.UUID, session: Session) -> dict[str, Any]:
    return _contact_json(await service.get_contact(session, contact_id))


@router.delete("/contacts/{contact_id}", status_code=204, dependencies=requires("operator"))
async def delete_contact(contact_id: uuid.UUID, session: Session) -> Response:
    await service.delete_contact(session, contact_id)
    return Response(status_code=204)


# -- notifications ---------------------------------------------------------------------


def _iso(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


def _notification_json(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: _iso(v) for k, v in row.items() if k not in ("attempt_log", "payload")}
    if "payload" in row:
        out["payload"] = row["payload"]
    if "attempt_log" in row:
        out["attempts_log"] = [{k: _iso(v) for k, v in a.items()} for a in row["attempt_log"]]
    return out


def _cursor(row: dict[str, Any]) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, _, nid = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(nid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidError("cursor is not one this API returned", field="cursor") from None


@router.get("/notifications", dependencies=requires("viewer"))
async def list_notifications(
    session: Session,
    account: Annotated[str | None, Query(pattern=ACCOUNT_ID_RE.pattern, max_length=128)] = None,
    status: Status | None = None,
    since: AwareDateTimeText | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    rows = await repo.list_notifications(
        session,
        account=account,
        status=status.value if status else None,
        since=since,
        after=_parse_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_notification_json(r) for r in rows],
        "next_cursor": _cursor(rows[-1]) if more and rows else None,
    }


@router.get("/notifications/{notification_id}", dependencies=requires("viewer"))
async def get_notification(notification_id: uuid.UUID, session: Session) -> dict[str, Any]:
    row = await repo.get_notification(session, notification_id)
    if row is None:
        raise NotFoundError(f"notification {notification_id} does not exist")
    return _notification_json(row)


@router.post("/notifications/{notification_id}/retry", dependencies=requires("operator"))
async def retry_notification(
    notification_id: uuid.UUID, session: Session, runtime: RuntimeDep
) -> dict[str, Any]:
    """A failed delivery is made due now, with a fresh retry period."""
    row = await repo.get_notification(session, notification_id)
    if row is None:
        raise NotFoundError(f"notification {notification_id} does not exist")
    if await repo.reopen(session, notification_id, _settings(runtime).retry_for) is None:
        raise ConflictError(
            f"notification {notification_id} is {row['status']}: only a failed delivery "
            "to a contact can be retried"
        )
    again = await repo.get_notification(session, notification_id)
    assert again is not None
    return _notification_json(again)


class TestSendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_id: uuid.UUID
    channel: Channel | None = Field(default=None, description="default: the contact's first")
    kind: Kind = Kind.WARNING


@router.post("/test-send", dependencies=requires("operator"))
async def test_send(body: TestSendIn, runtime: RuntimeDep) -> dict[str, Any]:
    """Send a test message to a contact now; the answer carries the recorded attempt."""
    nid = await send_test(runtime.sessions, _settings(runtime), body.contact_id, body.channel,
                          body.kind)  # fmt: skip
    async with runtime.sessions() as session:
        row = await repo.get_notification(session, nid)
    assert row is not None
    return _notification_json(row)


# -- provider delivery reports -------------------------------------------------------------

# final report statuses of a Twilio-shaped Messages API; the others (queued, sending,
# sent) change nothing: the message was already recorded as accepted
_SMS_FINAL = {"delivered": True, "undelivered": False, "failed": False}


@router.post(
    "/providers/sms/status",
    status_code=204,
    dependencies=signed_by("SMS provider signature (X-Twilio-Signature)"),
)
async def sms_status(request: Request, session: Session, runtime: RuntimeDep) -> Response:
    """Delivery reports of the SMS provider, signed with the account's auth token."""
    settings = _settings(runtime)
    if not (settings.sms_status_callback_url and settings.sms_auth_token):
        raise NotFoundError("SMS delivery reports are not configured")
    # application/x-www-form-urlencoded, parsed here (no multipart dependency needed)
    try:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise InvalidError("the body is not form-encoded text", field="body") from None
    token = settings.sms_auth_token.get_secret_value()
    if not verify_status(
        token, settings.sms_status_callback_url, form, request.headers.get("X-Twilio-Signature")
    ):
        raise UnauthorizedError("bad or missing X-Twilio-Signature")
    sid, status = form.get("MessageSid", ""), form.get("MessageStatus", "")
    if not sid:
        raise InvalidError("MessageSid is required", field="MessageSid")
    if status in _SMS_FINAL:
        detail = f"provider reported {status}" + (
            f" (error {form['ErrorCode']})" if form.get("ErrorCode") else ""
        )
        reported = await repo.provider_report(session, "sms", sid, _SMS_FINAL[status], detail)
        # undelivered/failed: a margin call or liquidation goes on the next channel
        if reported is not None and reported.status == "failed":
            await failover(session, reported, settings.retry_for)
    return Response(status_code=204)
