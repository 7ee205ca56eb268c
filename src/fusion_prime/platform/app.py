"""The HTTP app factory every service uses."""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fusion_prime.platform import auth
from fusion_prime.platform.bus.wiring import BusWorkers, attach_bus
from fusion_prime.platform.database import create_engine
from fusion_prime.platform.errors import install_error_handlers, problem
from fusion_prime.platform.health import router as health_router
from fusion_prime.platform.observability import REQUEST_LATENCY, get_logger
from fusion_prime.platform.openapi import problem_openapi
from fusion_prime.platform.runtime import BackgroundTask, Runtime
from fusion_prime.platform.settings import BaseServiceSettings
from fusion_prime.platform.spec import ServiceSpec

log = get_logger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"


async def _supervise(name: str, task: BackgroundTask) -> None:
    """Keep a background loop alive: a crash is logged and the loop restarted with back-off.

    The back-off grows while crashes follow each other and starts over after a loop ran
    for a while, so a rare crash hours later is not delayed by old ones.
    """
    delay = 0.5
    while True:
        started = time.monotonic()
        try:
            await task()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if time.monotonic() - started > 60:
                delay = 0.5
            log.exception("background task crashed; restarting", task=name, delay=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


# CPython's own default. py_ecc (imported with web3 by settlement and the oracle, sometimes
# lazily: settlement's readiness loads the relayer) raises the limit to 100,000 for the
# whole process when first imported; a request body nested 100,000 deep then took
# json.loads past the C stack and the service died with SIGSEGV. At the default the parser
# stops with RecursionError, which FastAPI answers 400.
RECURSION_LIMIT = 1000


def _restore_recursion_limit() -> None:
    """Run py_ecc's import-time side effect now (if it is installed), then undo it."""
    if importlib.util.find_spec("py_ecc") is not None:
        importlib.import_module("py_ecc")
    sys.setrecursionlimit(RECURSION_LIMIT)


def create_app(spec: ServiceSpec, settings: BaseServiceSettings, url: URL) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _restore_recursion_limit()
        engine = create_engine(url, pool_size=settings.db_pool_size, app_name=spec.name)
        runtime = Runtime(
            service=spec.name,
            settings=settings,
            url=url,
            engine=engine,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
        )
        app.state.runtime = runtime
        app.state.authenticator = auth.Authenticator(
            engine,
            service=spec.name,
            ttl=settings.auth_cache_seconds,
            rate=settings.rate_limit_per_second,
            burst=settings.rate_limit_burst,
            oidc=auth.OidcCallers.from_settings(settings),
        )
        tasks = [
            asyncio.create_task(_supervise(f"{spec.name}-bg-{i}", t), name=f"{spec.name}-bg-{i}")
            for i, t in enumerate(spec.background(runtime))
        ]
        bus = BusWorkers.for_runtime(spec, runtime, app)
        app.state.bus_workers = bus  # the /bus/... routes read the queues through its pool
        tasks += [asyncio.create_task(_supervise(n, t), name=n) for n, t in bus.tasks()]
        if getattr(app.state, "freeze_heap", False):
            # everything loaded at start-up (modules, the ABI, compiled SQL) is kept for
            # the process's life: moved out of the collector's sight, so a full collection
            # walks only what was allocated since. In a 20,000-event chain backfill, full
            # collections took 3.3 s of the process's ~25 s before, 1.0 s after.
            gc.freeze()
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bus.close()
            await engine.dispose()

    app = FastAPI(
        title=f"Fusion Prime {spec.name}",
        description=spec.description,
        lifespan=lifespan,
    )
    app.state.spec = spec
    app.openapi = lambda: problem_openapi(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    for router in (health_router, auth.router, *spec.routers()):
        auth.document_rules(router)  # each route's role in the OpenAPI document
        app.include_router(router)
    attach_bus(app, spec, settings)  # consumers from the registry (+ push with FP_BUS=pubsub)

    @app.middleware("http")
    async def _request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id, service=spec.name)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUEST_LATENCY.labels(spec.name, request.method, path, str(status)).observe(
                time.perf_counter() - started
            )
            structlog.contextvars.unbind_contextvars("request_id")

    # outermost: a body over FP_MAX_BODY_BYTES is refused before anything reads it
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


class BodyLimit:
    """413 problem+json for a request body over `limit` bytes: by Content-Length at once,
    and by counting while the body is read (chunked or with a Content-Length that lies)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, "Payload too large", f"the request body is over {self.limit} bytes")
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send)
                return
        seen = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not started:
                    # answer now; the app sees the client gone and its answer is dropped
                    refused = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused:
                raise
