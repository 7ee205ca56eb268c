"""The URL guard: PostgreSQL only, every spelling normalised in one place, no fallback."""

from __future__ import annotations

import pytest

from fusion_prime.platform.database import (
    DatabaseConfigError,
    normalise_database_url,
    redact_text,
    redact_url,
)


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://u:p@db:5432/x",
        "postgresql://u:p@db:5432/x",
        "postgresql+psycopg2://u:p@db/x",
        "postgresql+asyncpg://u:p@db/x",
        "postgresql+psycopg://u:p@db/x",
    ],
)
def test_postgres_spellings_normalise_to_asyncpg(raw: str) -> None:
    url = normalise_database_url(raw, service="settlement")
    assert url.drivername == "postgresql+asyncpg"
    assert url.database == "x"
    assert url.password == "p"


def test_cloud_sql_socket_form() -> None:
    raw = "postgresql://fp:secret@/settlement?host=/cloudsql/fusion-prime:us-central1:fp-settlement-db"
    url = normalise_database_url(raw, service="settlement")
    assert url.drivername == "postgresql+asyncpg"
    assert url.host is None
    assert url.query["host"] == "/cloudsql/fusion-prime:us-central1:fp-settlement-db"


def test_sslmode_becomes_asyncpg_ssl() -> None:
    url = normalise_database_url("postgresql://u:p@h/x?sslmode=require", service="risk")
    assert url.query == {"ssl": "require"}


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_missing_url_names_variable_service_and_secret(raw: str | None) -> None:
    with pytest.raises(DatabaseConfigError) as err:
        normalise_database_url(raw, service="alerts", db_slug="alert")
    msg = str(err.value)
    assert "DATABASE_URL" in msg
    assert "alerts" in msg
    assert "fp-alert-db-connection-string" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "raw",
    [
        "sqlite+aiosqlite:///./settlement.db",
        "sqlite:///:memory:",
        "mysql://root:pw@localhost/x",
        "mysql+aiomysql://root@localhost/x",
    ],
)
def test_other_databases_are_refused(raw: str) -> None:
    with pytest.raises(DatabaseConfigError, match="only PostgreSQL is supported"):
        normalise_database_url(raw, service="settlement")


@pytest.mark.parametrize("raw", ["not a url", "postgresql://", "://nohost", "postgresql://u@h"])
def test_garbage_is_refused(raw: str) -> None:
    with pytest.raises(DatabaseConfigError):
        normalise_database_url(raw, service="settlement")


def test_refusal_never_echoes_the_password() -> None:
    with pytest.raises(DatabaseConfigError) as err:
        normalise_database_url("mysql://root:hunter2@localhost/x", service="settlement")
    assert "hunter2" not in str(err.value)


def test_redaction() -> None:
    url = normalise_database_url("postgresql://fp:s3cr3t@db:5432/x", service="risk")
    assert redact_url(url) == "postgresql+asyncpg://fp:***@db:5432/x"
    text = "connect to postgresql://a:b@c/d and redis://:tok@h:6379/0 failed"
    assert redact_text(text) == "connect to postgresql://a:***@c/d and redis://:***@h:6379/0 failed"


def test_asyncpg_dsn_takes_raw_and_normalised_urls() -> None:
    from fusion_prime.platform.admin import asyncpg_dsn

    url = normalise_database_url("postgresql://u:p@h:5432/x?sslmode=require", service="risk")
    assert asyncpg_dsn(url) == "postgresql://u:p@h:5432/x?sslmode=require"
    assert asyncpg_dsn("postgres://u:p@h/x", database="y") == "postgresql://u:p@h/y"
