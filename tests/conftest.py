"""Shared fixtures: a real PostgreSQL server for the session, a migrated database per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from fusion_prime.platform.embedded import EmbeddedPostgres
from tests.harness import (
    BUS_DATABASES_MADE,
    BUS_MIGRATIONS_DIR,
    TEST_DATA_DIR,
    TEST_SERVER_SETTINGS,
    DatabaseFactory,
    HarnessConfigError,
    admin_url_from_env,
    validate_test_url,
)

MakeDatabase = Callable[..., Awaitable[str]]


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a non-PostgreSQL TEST_DATABASE_URL before any test runs."""
    raw = os.environ.get("TEST_DATABASE_URL")
    if raw:
        try:
            validate_test_url(raw)
        except HarnessConfigError as exc:
            raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def embedded_admin_url(pg_admin_url: str) -> Iterator[str]:
    """An embedded server even when the suite runs on TEST_DATABASE_URL (for embedded checks)."""
    if not os.environ.get("TEST_DATABASE_URL"):
        yield pg_admin_url
        return
    server = EmbeddedPostgres(TEST_DATA_DIR, settings=TEST_SERVER_SETTINGS)
    was_running = server.running()
    yield server.start()
    if not was_running:
        server.stop()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """The suite's server. The embedded one is stopped when the last pytest session using
    it ends (each session registers its pid beside the data), so parallel runs coexist."""
    try:
        url, server = admin_url_from_env()
    except HarnessConfigError as exc:
        pytest.exit(str(exc), returncode=2)
    if server is None:
        yield url
        return
    users = server.data_dir / "sessions"
    users.mkdir(exist_ok=True)
    mine = users / str(os.getpid())
    mine.touch()
    yield url
    mine.unlink(missing_ok=True)
    if not [p for p in users.iterdir() if _alive(p.name)]:
        server.stop()


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
async def db_factory(pg_admin_url: str) -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_admin_url)
    yield factory
    # bus databases ServiceProcess made for publishing/consuming services (same server
    # only: a test may point a process at a private server, which it removes itself)
    server = make_url(pg_admin_url)
    for url in BUS_DATABASES_MADE:
        made = make_url(url)
        if (made.host, made.port) == (server.host, server.port):
            await factory.drop(url)
    BUS_DATABASES_MADE.clear()


@pytest.fixture
async def make_database(db_factory: DatabaseFactory) -> AsyncIterator[MakeDatabase]:
    """`await make_database(name, migrations_dir)` -> URL of a fresh migrated database."""
    made: list[str] = []

    async def _make(name: str, migrations_dir: Path | None = None) -> str:
        url = await db_factory.create(name, migrations_dir)
        made.append(url)
        return url

    yield _make
    for url in made:
        await db_factory.drop(url)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
async def bus_url(db_factory: DatabaseFactory) -> AsyncIterator[str]:
    """A fresh bus database (the postgres broker's), migrated, dropped after the test."""
    url = await db_factory.create("bus", BUS_MIGRATIONS_DIR)
    yield url
    await db_factory.drop(url)
