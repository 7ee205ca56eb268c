"""Google Cloud Pub/Sub adapter: the publisher and the authenticated push endpoint.

Publishing uses the official client with message ordering on (ordering key = subject)
and the attribute `event_type`. Consuming on Cloud Run is a push subscription to
`POST /events/pubsub/{subscription}`: the message is applied in one service transaction
with its inbox claim, and the endpoint answers 204 only after that commit. Any other
answer makes Pub/Sub redeliver (and, after the subscription's max delivery attempts,
forward to its dead-letter topic, which the deploy files create from the registry).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import time
from collections.abc import Collection, Sequence
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fusion_prime.platform.auth import signed_by
from fusion_prime.platform.bus.consumer import CONSUMED, Consumer
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.inbox import consume_batch
from fusion_prime.platform.bus.postgres import OutgoingEvent
from fusion_prime.platform.bus.relay import PublishResult
from fusion_prime.platform.errors import problem
from fusion_prime.platform.observability import get_logger
from fusion_prime.platform.runtime import get_runtime
from fusion_prime.platform.settings import BaseServiceSettings

log = get_logger(__name__)

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})


# -- publishing -------------------------------------------------------------------


def pubsub_message(event: OutgoingEvent) -> tuple[bytes, dict[str, str], str]:
    """(data, attributes, ordering_key) of the Pub/Sub message carrying `event`."""
    return (
        event.envelope_json.encode(),
        {"event_type": event.event_type, "event_id": str(event.event_id)},
        event.subject,
    )


def refused_by_pubsub(exc: BaseException) -> bool:
    """Pub/Sub refuses the message itself (it will every time), not a transient failure."""
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.InvalidArgument)


class PubSubPublisher:
    """Publishes outbox batches; accepted = the ids whose publish future succeeded."""

    def __init__(self, project: str, client: Any = None) -> None:
        if client is None:
            from google.cloud import pubsub_v1

            client = pubsub_v1.PublisherClient(
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
            )
        self.project = project
        self.client = client

    async def publish(self, events: Sequence[OutgoingEvent]) -> PublishResult:
        pending = []
        for event in events:
            data, attributes, key = pubsub_message(event)
            topic_path = self.client.topic_path(self.project, event.topic)
            future = self.client.publish(topic_path, data, ordering_key=key, **attributes)
            pending.append((event, topic_path, future))
        result = PublishResult(set())
        paused: set[tuple[str, str]] = set()
        for event, topic_path, future in pending:
            try:
                await asyncio.wrap_future(future)
            except Exception as exc:
                paused.add((topic_path, event.subject))
                if refused_by_pubsub(exc):
                    result.refused[event.event_id] = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning(
                    "pubsub publish failed",
                    topic=event.topic,
                    event_id=str(event.event_id),
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                continue
            result.accepted.add(event.event_id)
        # a failed ordering key stays paused (later messages of it fail too, which keeps
        # the order); resume it so the relay's retry of the same rows can go out
        for topic_path, key in paused:
            with contextlib.suppress(RuntimeError):  # "not paused": nothing to do
                self.client.resume_publish(topic_path, key)
        return result


# -- push endpoint -------------------------------------------------------------------


class PushAuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class PushTokenVerifier:
    """Checks a Google-signed OIDC ID token: the one Pub/Sub puts on each push request,
    and (platform/auth.py) those of other services calling an API in production.

    Signature against Google's certificates (fetched from `certs_url`, cached per its
    Cache-Control max-age, refetched once on an unknown key id), issuer, audience, expiry,
    and the email of an allowed service account (verified).
    """

    def __init__(
        self, certs_url: str, audience: str, service_account: str | Collection[str]
    ) -> None:
        self.certs_url = certs_url
        self.audience = audience
        self.accounts = frozenset(
            [service_account] if isinstance(service_account, str) else service_account
        )
        self._certs: dict[str, str] = {}
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def _fetch(self, force: bool) -> dict[str, str]:
        async with self._lock:
            if not force and self._certs and time.monotonic() < self._expires:
                return self._certs
            async with httpx.AsyncClient(timeout=5.0) as client:
                r = await client.get(self.certs_url)
                r.raise_for_status()
            certs = r.json()
            if not isinstance(certs, dict):
                raise ValueError("certificate endpoint did not return a JSON object")
            match = re.search(r"max-age=(\d+)", r.headers.get("cache-control", ""))
            self._certs = {str(k): str(v) for k, v in certs.items()}
            self._expires = time.monotonic() + (int(match.group(1)) if match else 300)
            return self._certs

    async def verify(self, authorization: str | None) -> dict[str, Any]:
        from google.auth import exceptions as gexc
        from google.auth import jwt

        if not authorization or not authorization.lower().startswith("bearer "):
            raise PushAuthError(401, "missing bearer token")
        token = authorization[7:].strip()
        try:
            certs = await self._fetch(force=False)
        except (httpx.HTTPError, ValueError) as exc:
            raise PushAuthError(503, f"cannot fetch token certificates: {exc}") from exc
        claims: dict[str, Any] | None = None
        for attempt in range(2):
            try:
                claims = jwt.decode(  # type: ignore[no-untyped-call]
                    token, certs=certs, audience=self.audience, clock_skew_in_seconds=10
                )
                break
            except (ValueError, gexc.GoogleAuthError) as exc:
                if attempt == 0 and "Certificate for key id" in str(exc):
                    try:
                        certs = await self._fetch(force=True)
                    except (httpx.HTTPError, ValueError) as fexc:
                        raise PushAuthError(503, f"cannot fetch certificates: {fexc}") from fexc
                    continue
                raise PushAuthError(401, f"invalid token: {exc}") from exc
        assert claims is not None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise PushAuthError(401, "token not issued by Google")
        if claims.get("email") not in self.accounts or not claims.get("email_verified"):
            raise PushAuthError(403, "token is not from an allowed service account")
        return claims


class _PushMessage(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    data: str = Field(min_length=1)
    attributes: dict[str, str] = Field(default_factory=dict)
    message_id: str = Field(alias="messageId", min_length=1)
    publish_time: str | None = Field(default=None, alias="publishTime")


class PushEnvelope(BaseModel):
    """The JSON body Pub/Sub POSTs to a push endpoint (unwrapped payloads are refused)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    message: _PushMessage
    subscription: str = Field(min_length=1)
    delivery_attempt: int | None = Field(default=None, alias="deliveryAttempt")


def decode_push(body: bytes) -> tuple[PushEnvelope, Envelope]:
    """Parse a push body into the push envelope and our event envelope; ValueError if bad."""
    try:
        push = PushEnvelope.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(f"not a Pub/Sub push envelope: {_first_error(exc)}") from exc
    try:
        raw = base64.b64decode(push.message.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("message.data is not base64") from exc
    try:
        event = Envelope.from_json(raw)
    except ValidationError as exc:
        raise ValueError(f"message.data is not an event envelope: {_first_error(exc)}") from exc
    attr_type = push.message.attributes.get("event_type")
    if attr_type is not None and attr_type != event.type:
        raise ValueError(f"attribute event_type {attr_type!r} differs from type {event.type!r}")
    return push, event


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{loc}: {err.get('msg', '')}"


def push_verifier(settings: BaseServiceSettings) -> PushTokenVerifier | None:
    if not settings.push_audience or not settings.push_service_account:
        return None
    return PushTokenVerifier(
        settings.push_certs_url, settings.push_audience, settings.push_service_account
    )


push_router = APIRouter(tags=["events"])


@push_router.post(
    "/events/pubsub/{subscription}",
    status_code=204,
    response_class=Response,
    dependencies=signed_by("Google OIDC token of the push service account"),
)
async def pubsub_push(subscription: str, request: Request) -> Response:
    """Apply one pushed message; 204 only after its transaction committed."""
    runtime = get_runtime(request)
    settings = runtime.settings
    # mounted only with FP_BUS=pubsub, and then every request is authenticated, whatever
    # FP_ENV says: development is no reason to accept events from anyone
    verifier: PushTokenVerifier | None = getattr(request.app.state, "push_verifier", None)
    if verifier is None:
        verifier = push_verifier(settings)
        request.app.state.push_verifier = verifier
    if verifier is None:
        return problem(
            503,
            "Push authentication not configured",
            "set FP_PUSH_AUDIENCE and FP_PUSH_SERVICE_ACCOUNT",
        )
    try:
        await verifier.verify(request.headers.get("authorization"))
    except PushAuthError as exc:
        title = {401: "Unauthorized", 403: "Forbidden"}.get(exc.status, "Unavailable")
        return problem(exc.status, title, exc.detail)
    consumers: dict[str, Consumer] = getattr(request.app.state, "bus_consumers", {})
    consumer = consumers.get(subscription)
    if consumer is None:
        return problem(404, "Not found", f"this service has no subscription {subscription!r}")
    try:
        push, event = decode_push(await request.body())
    except ValueError as exc:
        return problem(400, "Malformed push envelope", str(exc))
    handlers: dict[str, Any] = request.app.state.bus_handlers
    try:
        async with runtime.sessions() as session, session.begin():
            fresh = await consume_batch(session, subscription, [event], handlers[subscription])
    except Exception as exc:
        log.warning(
            "push handler failed; Pub/Sub will redeliver",
            subscription=subscription,
            event_id=str(event.id),
            message_id=push.message.message_id,
            delivery_attempt=push.delivery_attempt,
            error=f"{type(exc).__name__}: {exc}"[:500],
        )
        return problem(500, "Handler failed", "the event was not applied; it will be retried")
    CONSUMED.labels(subscription).inc(fresh)
    return Response(status_code=204)


def encode_push(
    event: Envelope, subscription_path: str, *, message_id: str, attempt: int | None = None
) -> dict[str, Any]:
    """The push body Pub/Sub sends for `event` (it carries both field spellings)."""
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(event.to_json().encode()).decode(),
            "attributes": {"event_type": event.type, "event_id": str(event.id)},
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": event.time.isoformat().replace("+00:00", "Z"),
            "publish_time": event.time.isoformat().replace("+00:00", "Z"),
        },
        "subscription": subscription_path,
    }
    if attempt is not None:
        body["deliveryAttempt"] = attempt
    return body
