"""Server-level administration for the launcher and the test harness (create databases)."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import URL, make_url


def asyncpg_dsn(url: str | URL, database: str | None = None) -> str:
    """A plain libpq-style DSN for asyncpg, optionally pointing at another database.

    Accepts raw and normalised URLs: the guard spells libpq's sslmode as asyncpg's
    ssl= (a connect() argument), which a DSN must carry as sslmode again.
    """
    u = make_url(url) if isinstance(url, str) else url
    query = dict(u.query)
    if "ssl" in query:
        query["sslmode"] = query.pop("ssl")
    u = u.set(drivername="postgresql", query=query)
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(admin_url: str, name: str) -> bool:
    """Create database `name` if missing; return True when it was created."""
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
        return True
    finally:
        await conn.close()
