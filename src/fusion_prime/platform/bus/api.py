"""`/bus/...`: the postgres broker's queues over HTTP, for the operator console.

Each service shows the subscriptions it operates (registry.operated_by: the ones it
consumes, plus external consumers' queues on topics it publishes), so every queue is
visible through exactly one service and no reader needs the bus database's URL.
Mounted only with FP_BUS=postgres and FP_BUS_URL (a process without the bus has no such
routes); on Pub/Sub the queues live in Google Cloud.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from fusion_prime.platform.auth import Caller, requires
from fusion_prime.platform.bus.postgres import DeadLetter, PostgresBroker
from fusion_prime.platform.bus.registry import operated_by
from fusion_prime.platform.errors import ConflictError, DomainError, NotFoundError

router = APIRouter(tags=["bus"])


class BusUnavailableError(DomainError):
    status = 503
    title = "Service unavailable"


async def _broker(request: Request) -> PostgresBroker:
    workers = getattr(request.app.state, "bus_workers", None)
    if workers is None:
        raise NotFoundError("this process runs no bus workers")
    try:
        broker: PostgresBroker = await workers.ensure_broker()
    except ValueError as exc:  # FP_BUS_URL missing (a process without the bus)
        raise BusUnavailableError(str(exc)) from None
    return broker


def _owned(request: Request) -> list[str]:
    return operated_by(request.app.state.spec.name)


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at is not None else None


def _dead_letter_json(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "subscription": d.subscription,
        "event_id": str(d.event_id),
        "topic": d.topic,
        "subject": d.subject,
        "event_type": d.event_type,
        "attempts": d.attempts,
        "error": d.error,
        "dead_at": _iso(d.dead_at),
        "replayed_at": _iso(d.replayed_at),
        "replayed_by": d.replayed_by,
    }


@router.get("/bus/subscriptions", dependencies=requires("viewer"))
async def subscriptions(request: Request) -> dict[str, Any]:
    """Depth (ready + leased), acked, dead letters and the oldest unacked message's age."""
    owned = _owned(request)
    rows = await (await _broker(request)).status(owned) if owned else []
    now = datetime.now(UTC)
    items = []
    for r in rows:
        oldest = r["oldest_unacked_at"]
        items.append(
            {
                "subscription": r["subscription"],
                "topic": r["topic"],
                "ready": int(r["ready"]),
                "leased": int(r["leased"]),
                "depth": int(r["ready"]) + int(r["leased"]),
                "acked": int(r["acked"]),
                "dead_letters": int(r["dead"]),
                "oldest_unacked_at": _iso(oldest),
                "oldest_age_seconds": (
                    round((now - oldest).total_seconds(), 3) if oldest is not None else None
                ),
            }
        )
    return {"service": request.app.state.spec.name, "items": items}


@router.get("/bus/dead-letters", dependencies=requires("viewer"))
async def dead_letters(
    request: Request,
    subscription: Annotated[str | None, Query(max_length=200)] = None,
    include_replayed: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    owned = _owned(request)
    if subscription is not None and subscription not in owned:
        raise NotFoundError(f"subscription {subscription!r} is not operated by this service")
    broker = await _broker(request)
    rows: list[DeadLetter] = []
    for name in [subscription] if subscription else owned:
        rows += await broker.dead_letters(name, include_replayed=include_replayed, limit=limit)
    rows.sort(key=lambda d: d.id)
    return {"items": [_dead_letter_json(d) for d in rows[:limit]]}


@router.post("/bus/dead-letters/{dead_letter_id}/replay", dependencies=requires("operator"))
async def replay(
    dead_letter_id: Annotated[int, Path(ge=1, le=2**63 - 1)], request: Request, caller: Caller
) -> dict[str, Any]:
    """Queue the dead letter again with fresh attempts (once; a second replay is a 409)."""
    broker = await _broker(request)
    found = await broker.get_dead_letter(dead_letter_id)
    if found is None or found.subscription not in _owned(request):
        raise NotFoundError(f"no dead letter {dead_letter_id} on this service's subscriptions")
    try:
        replayed = await broker.replay(dead_letter_id, by=caller.actor)
    except KeyError as exc:
        raise NotFoundError(str(exc.args[0])) from None
    except ValueError as exc:
        raise ConflictError(str(exc)) from None
    return _dead_letter_json(replayed)
