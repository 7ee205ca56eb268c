"""Start one service process: guard the database, then serve.

Everything that can refuse to start happens here, before a socket is bound, and is
reported as one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import uvicorn
from pydantic import ValidationError
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fusion_prime.platform.database import (
    DatabaseConfigError,
    DatabaseUnavailableError,
    engine_scope,
    normalise_database_url,
    redact_text,
    redact_url,
    secret_name,
    server_info,
    wait_for_database,
    write_heartbeat,
)
from fusion_prime.platform.migrations import migration_state, upgrade
from fusion_prime.platform.observability import DATABASE_UP, configure_logging, get_logger
from fusion_prime.platform.settings import BaseServiceSettings
from fusion_prime.platform.spec import ServiceSpec

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_MIGRATIONS = 4

log = get_logger("fusion_prime.runner")


class StartupRefusedError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _fail(spec: ServiceSpec, message: str, code: int) -> NoReturn:
    line = redact_text(message).replace("\n", " ")
    sys.stderr.write(f"fusion-prime {spec.name}: refusing to start: {line}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def load_settings(
    spec: ServiceSpec, *, settings_cls: type[BaseServiceSettings] | None = None
) -> tuple[BaseServiceSettings, URL]:
    """Read the environment; raise StartupRefusedError with a one-line reason.

    `settings_cls` overrides the service's own class: `fusion-prime migrate` needs only
    the database, not the service's other secrets.
    """
    # every problem in one refusal, DATABASE_URL first: naming only the first setting pydantic
    # met hid the database (the incident's own failure) behind a missing secret
    problems: list[str] = []
    settings: BaseServiceSettings | None = None
    try:
        settings = (settings_cls or spec.settings_cls)()
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors()
            if e["loc"] != ("DATABASE_URL",)
        ]
    raw = settings.database_url if settings is not None else os.environ.get("DATABASE_URL")
    url: URL | None = None
    try:
        url = normalise_database_url(raw, service=spec.name, db_slug=spec.db_slug)
    except DatabaseConfigError as exc:
        problems.insert(0, str(exc))
    if problems or settings is None or url is None:
        count = f"{len(problems)} settings refused" if len(problems) > 1 else "setting refused"
        raise StartupRefusedError(f"{count}: " + " | ".join(problems), EXIT_CONFIG)
    return settings, url


async def with_sessions(
    spec: ServiceSpec,
    command: str,
    work: Callable[[async_sessionmaker[AsyncSession], Any], Awaitable[int]],
    refused: Callable[[str], object],
) -> int:
    """Run an operator command's `work(sessions, settings)` on the service's database
    (DATABASE_URL and the service's settings, like the service); its exit code. A
    refused configuration is reported through `refused` and exits 2."""
    try:
        settings, url = load_settings(spec)
    except StartupRefusedError as exc:
        refused(str(exc))
        return EXIT_CONFIG
    async with engine_scope(url, pool_size=2, app_name=f"{spec.name}-{command}") as engine:
        return await work(async_sessionmaker(engine, expire_on_commit=False), settings)


async def preflight(
    spec: ServiceSpec, settings: BaseServiceSettings, url: URL, *, migrate: bool
) -> None:
    """Wait for the server, refuse embedded in production, check migrations, heartbeat."""
    async with engine_scope(url, pool_size=1, app_name=f"{spec.name}-preflight") as engine:
        try:
            await wait_for_database(engine, timeout=settings.db_connect_timeout)
        except DatabaseUnavailableError as exc:
            raise StartupRefusedError(str(exc), EXIT_UNAVAILABLE) from exc
        async with engine.begin() as conn:
            info = await server_info(conn)
            if info.embedded and settings.production:
                raise StartupRefusedError(
                    f"DATABASE_URL ({redact_url(url)}) points at the local embedded PostgreSQL, "
                    "which is refused when FP_ENV=production; use the service's own server "
                    f"(Secret Manager secret {secret_name(spec.db_slug)}).",
                    EXIT_CONFIG,
                )
            state = await migration_state(conn, spec.migrations_dir)
            if not state.at_head:
                if not migrate:
                    raise StartupRefusedError(
                        f"database {info.database} is at migration {state.current or 'none'} "
                        f"but the code expects {state.head}; run `fusion-prime migrate "
                        f"{spec.name}` (or start with --migrate for local use).",
                        EXIT_MIGRATIONS,
                    )
                log.info("applying migrations", frm=state.current, to=state.head)
                await upgrade(conn, spec.migrations_dir)
        async with engine.begin() as conn:
            beat = await write_heartbeat(conn, spec.name)
        DATABASE_UP.labels(spec.name).set(1)
        await _bus_preflight(spec, settings)
        log.info(
            "database ready",
            server_version=info.server_version,
            database=info.database,
            embedded=info.embedded,
            revision=state.head,
            heartbeat_at=beat.isoformat(),
        )


async def _bus_preflight(spec: ServiceSpec, settings: BaseServiceSettings) -> None:
    """A publishing/consuming service needs a reachable, migrated bus (or Pub/Sub config)."""
    from fusion_prime.platform.bus.postgres import MIGRATIONS_DIR as BUS_MIGRATIONS
    from fusion_prime.platform.bus.wiring import bus_url, consumers_for

    consumers = consumers_for(spec)
    if not spec.publishes and not consumers:
        return
    if settings.fp_bus == "pubsub":
        if not settings.gcp_project:
            raise StartupRefusedError(
                f"{spec.name}: FP_BUS=pubsub needs GCP_PROJECT (the project of the topics).",
                EXIT_CONFIG,
            )
        if consumers and not (settings.push_audience and settings.push_service_account):
            # in every FP_ENV: an unauthenticated push endpoint would let anyone inject events
            raise StartupRefusedError(
                f"{spec.name}: FP_BUS=pubsub with consumers needs FP_PUSH_AUDIENCE and "
                "FP_PUSH_SERVICE_ACCOUNT to authenticate Pub/Sub push requests.",
                EXIT_CONFIG,
            )
        return
    try:
        url = bus_url(settings, spec.name)
    except ValueError as exc:
        raise StartupRefusedError(str(exc), EXIT_CONFIG) from exc
    log.info(f"Using bus database URL: {redact_url(url)}")
    async with engine_scope(url, pool_size=1, app_name=f"{spec.name}-preflight") as engine:
        try:
            await wait_for_database(engine, timeout=settings.db_connect_timeout)
        except DatabaseUnavailableError as exc:
            raise StartupRefusedError(f"bus database: {exc}", EXIT_UNAVAILABLE) from exc
        async with engine.connect() as conn:
            state = await migration_state(conn, BUS_MIGRATIONS)
    if not state.at_head:
        raise StartupRefusedError(
            f"{spec.name}: the bus database (FP_BUS_URL={redact_url(url)}) is at migration "
            f"{state.current or 'none'} but the code expects {state.head}; run "
            "`fusion-prime events migrate`.",
            EXIT_MIGRATIONS,
        )


def run_service(
    spec: ServiceSpec, *, host: str = "127.0.0.1", port: int | None = None, migrate: bool = False
) -> None:
    try:
        settings, url = load_settings(spec)
    except StartupRefusedError as exc:
        _fail(spec, str(exc), exc.code)
    configure_logging(settings.log_level)
    log.info(f"Using database URL: {redact_url(url)}")
    try:
        asyncio.run(preflight(spec, settings, url, migrate=migrate))
    except StartupRefusedError as exc:
        _fail(spec, str(exc), exc.code)
    from fusion_prime.platform.app import create_app

    app = create_app(spec, settings, url)
    app.state.freeze_heap = True  # a real process: see create_app's lifespan
    uvicorn.run(
        app,
        host=host,
        port=port or spec.default_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
