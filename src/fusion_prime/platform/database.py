"""The database guard: the one place a DATABASE_URL is accepted, normalised and checked.

The incident that started this project was a silent fallback to SQLite when the URL
was missing. Everything here fails loudly instead: a missing, foreign or unparseable
URL is a `DatabaseConfigError` whose message is meant to be printed as one line.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

ASYNC_DRIVER = "postgresql+asyncpg"
ACCEPTED_SCHEMES = frozenset(
    {
        "postgres",
        "postgresql",
        "postgresql+asyncpg",
        "postgresql+psycopg2",
        "postgresql+psycopg",
        "postgresql+pg8000",
    }
)
# The server-side setting the embedded launcher sets; a service reads it back to tell
# whether it talks to the local embedded server (refused in production).
EMBEDDED_SETTING = "fusion_prime.embedded"

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")


class DatabaseConfigError(Exception):
    """The configured database cannot be used; the message is one printable line."""


class DatabaseUnavailableError(Exception):
    """The server did not answer within the bounded retry window."""


def secret_name(db_slug: str) -> str:
    return f"fp-{db_slug}-db-connection-string"


def _cloud_run_hint(db_slug: str) -> str:
    return (
        f"on Cloud Run set it from Secret Manager: --set-secrets "
        f"DATABASE_URL={secret_name(db_slug)}:latest"
    )


def redact_url(url: str | URL) -> str:
    """Render a URL with its password replaced by ***."""
    if isinstance(url, URL):
        # URL.render_as_string(hide_password=True) prints ***, percent-safe
        return url.render_as_string(hide_password=True)
    return redact_text(url)


def redact_text(value: str) -> str:
    """Replace the password of every URL found in a free text by ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}***@", value)


def normalise_database_url(raw: str | None, *, service: str, db_slug: str | None = None) -> URL:
    """Accept only PostgreSQL and return the URL on the async driver.

    Accepted: postgres://, postgresql://, postgresql+<driver>://, and the Cloud SQL
    socket form postgresql://user:pw@/db?host=/cloudsql/PROJECT:REGION:INSTANCE.
    """
    slug = db_slug or service
    if raw is None or not raw.strip():
        raise DatabaseConfigError(
            f"{service}: DATABASE_URL is not set. Fusion Prime stores its data only in "
            f"PostgreSQL and has no fallback; set DATABASE_URL=postgresql://USER:PASSWORD@HOST"
            f":5432/DBNAME ({_cloud_run_hint(slug)})."
        )
    raw = raw.strip()
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseConfigError(
            f"{service}: DATABASE_URL could not be parsed as a URL ({redact_text(raw)!r}); "
            f"only PostgreSQL is supported, e.g. postgresql://USER:PASSWORD@HOST:5432/DBNAME "
            f"({_cloud_run_hint(slug)})."
        ) from exc
    scheme = url.drivername.lower()
    if scheme not in ACCEPTED_SCHEMES:
        raise DatabaseConfigError(
            f"{service}: DATABASE_URL uses {scheme!r}, but only PostgreSQL is supported "
            f"(postgresql://...); there is no SQLite or other fallback "
            f"({_cloud_run_hint(slug)})."
        )
    if not url.database:
        raise DatabaseConfigError(
            f"{service}: DATABASE_URL names no database ({redact_url(url)}); "
            f"only PostgreSQL URLs with a database name are supported."
        )
    query = dict(url.query)
    host_q = query.get("host")
    if url.host is None and not host_q:
        raise DatabaseConfigError(
            f"{service}: DATABASE_URL names no host ({redact_url(url)}); give HOST:PORT or "
            f"the Cloud SQL socket form ?host=/cloudsql/PROJECT:REGION:INSTANCE."
        )
    # libpq spells TLS as sslmode; asyncpg takes the same modes as ssl=.
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    return url.set(drivername=ASYNC_DRIVER, query=query)


def create_engine(url: URL, *, pool_size: int = 10, app_name: str = "fusion-prime") -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": app_name}, "timeout": 5},
    )


async def wait_for_database(engine: AsyncEngine, *, timeout: float) -> None:
    """Retry connecting with back-off until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    last: BaseException | None = None
    while True:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except Exception as exc:  # any failure to connect is retried until the deadline
            last = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)
    reason = redact_text(f"{type(last).__name__}: {last}") if last else "no answer"
    raise DatabaseUnavailableError(
        f"database did not answer within {timeout:g} s ({redact_url(engine.url)}): {reason}"
    )


@dataclass(frozen=True)
class ServerInfo:
    dialect: str
    server_version: str
    database: str
    embedded: bool


async def server_info(conn: AsyncConnection) -> ServerInfo:
    row = (
        await conn.execute(
            text(
                "SELECT current_setting('server_version'), current_database(), "
                f"coalesce(current_setting('{EMBEDDED_SETTING}', true), '')"
            )
        )
    ).one()
    return ServerInfo(
        dialect="postgresql",
        server_version=str(row[0]),
        database=str(row[1]),
        embedded=str(row[2]).lower() in {"on", "true", "1"},
    )


HEARTBEAT_TABLE = "fp_heartbeat"


async def write_heartbeat(conn: AsyncConnection, service: str) -> datetime:
    """Write this instance's heartbeat and read it back; proves writes reach the disk path."""
    instance = f"{socket.gethostname()}:{os.getpid()}"
    written = (
        await conn.execute(
            text(
                f"INSERT INTO {HEARTBEAT_TABLE} (service, instance, beat_at) "
                "VALUES (:service, :instance, clock_timestamp()) "
                "ON CONFLICT (service) DO UPDATE SET instance = excluded.instance, "
                "beat_at = excluded.beat_at RETURNING beat_at"
            ),
            {"service": service, "instance": instance},
        )
    ).scalar_one()
    read = (
        await conn.execute(
            text(f"SELECT beat_at, instance FROM {HEARTBEAT_TABLE} WHERE service = :service"),
            {"service": service},
        )
    ).one()
    if read[0] != written or read[1] != instance:
        raise DatabaseUnavailableError("heartbeat read back differs from what was written")
    return written  # type: ignore[no-any-return]


@asynccontextmanager
async def engine_scope(url: URL, **kwargs: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, **kwargs)
    try:
        yield engine
    finally:
        await engine.dispose()


async def driver_connection(session: Any) -> Any:
    """The asyncpg connection inside an AsyncSession's transaction (for COPY)."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def database_now(session: Any) -> datetime:
    """The database server's clock (`clock_timestamp()`, read now, not at transaction
    start). Decisions that several processes must agree on (leases, evaluation times,
    "is this price from the future") use it: a process whose own clock is off by minutes
    then still agrees with the others."""
    value = (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()
    return value  # type: ignore[no-any-return]


class DatabaseClock:
    """Unix seconds by the database server's clock, read with `sync` (cheap: one
    `clock_timestamp()`) and carried on between reads by this process's monotonic clock.
    What others check against their own true clocks (webhook signatures' timestamps)
    is stamped with it, so a process whose clock is minutes off still signs the time."""

    def __init__(self) -> None:
        self._base = (time.time(), time.monotonic())  # until the first sync

    async def sync(self, session: Any) -> None:
        at = (await database_now(session)).timestamp()
        self._base = (at, time.monotonic())

    def now(self) -> float:
        at, mono = self._base
        return at + (time.monotonic() - mono)


# -- storage faults ---------------------------------------------------------------------
#
# A full disk (SQLSTATE class 53, insufficient resources) does not stop the server from
# answering reads, and the heartbeat upsert may still fit in its page: readiness alone
# would stay 200 while every write of the consumers fails. The consumers note the fault
# here; readiness answers 503 naming it until a write succeeds again.


@dataclass
class StorageFault:
    cause: str
    since: float  # time.monotonic()


_storage_fault: StorageFault | None = None


def insufficient_resources(exc: BaseException) -> str | None:
    """The server's message when `exc` (or its cause chain) is SQLSTATE class 53 (disk
    full, out of memory, too many connections), else None."""
    import asyncpg

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, asyncpg.InsufficientResourcesError):
            return f"{type(seen).__name__} (SQLSTATE {seen.sqlstate}): {seen}"[:300]
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "orig", None)
    return None


def note_storage_fault(cause: str) -> None:
    global _storage_fault
    if _storage_fault is None:
        _storage_fault = StorageFault(cause, time.monotonic())
    else:
        _storage_fault.cause = cause


def clear_storage_fault() -> None:
    global _storage_fault
    _storage_fault = None


def storage_fault() -> StorageFault | None:
    return _storage_fault
