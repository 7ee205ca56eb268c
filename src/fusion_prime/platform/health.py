"""/health/live, /health/ready and /metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fusion_prime.platform.database import (
    insufficient_resources,
    server_info,
    storage_fault,
    write_heartbeat,
)
from fusion_prime.platform.migrations import migration_state
from fusion_prime.platform.observability import DATABASE_ERRORS, DATABASE_UP, get_logger
from fusion_prime.platform.runtime import get_runtime

router = APIRouter(tags=["health"])
log = get_logger(__name__)


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    responses={503: {"description": "the database did not answer, or migrations are not at head"}},
)
async def ready(request: Request) -> JSONResponse:
    runtime = get_runtime(request)
    spec = request.app.state.spec
    body: dict[str, Any] = {"service": runtime.service}
    try:
        async with runtime.engine.begin() as conn:
            info = await server_info(conn)
            state = await migration_state(conn, spec.migrations_dir)
            beat = await write_heartbeat(conn, runtime.service)
            extra = await spec.readiness(conn) if spec.readiness is not None else {}
    except Exception as exc:
        DATABASE_UP.labels(runtime.service).set(0)
        DATABASE_ERRORS.labels(runtime.service).inc()
        log.warning("readiness check failed", error=f"{type(exc).__name__}: {exc}")
        body.update(status="unavailable", error=type(exc).__name__)
        cause = insufficient_resources(exc)
        if cause is not None:
            body["cause"] = cause  # the server's own words (e.g. no space left on device)
        return JSONResponse(body, status_code=503)
    DATABASE_UP.labels(runtime.service).set(1)
    body.update(
        status="ok" if state.at_head else "unavailable",
        database={
            "dialect": info.dialect,
            "server_version": info.server_version,
            "database": info.database,
            "embedded": info.embedded,
            "revision": state.current,
            "head": state.head,
            "at_head": state.at_head,
            "heartbeat_at": beat.isoformat(),
        },
    )
    body.update(extra)
    fault = storage_fault()
    if fault is not None:
        # reads and the heartbeat answered, but the service's writes are being refused
        body.update(
            status="unavailable",
            error="storage",
            cause=fault.cause,
            since_seconds=round(time.monotonic() - fault.since, 1),
        )
        return JSONResponse(body, status_code=503)
    return JSONResponse(body, status_code=200 if state.at_head else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
