"""One Alembic tree per service, driven programmatically on an async engine.

Each service's `migrations/env.py` calls `run_env()`; the runner hands it a live
connection through `config.attributes`, so migrations run inside an event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, pool
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine


def alembic_config(migrations_dir: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision(migrations_dir: Path) -> str | None:
    heads = ScriptDirectory.from_config(alembic_config(migrations_dir)).get_heads()
    if len(heads) > 1:
        raise RuntimeError(f"{migrations_dir} has several Alembic heads: {heads}")
    return heads[0] if heads else None


@dataclass(frozen=True)
class MigrationState:
    current: str | None
    head: str | None

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def _current(sync_conn: Connection) -> str | None:
    heads = MigrationContext.configure(sync_conn).get_current_heads()
    return heads[0] if heads else None


async def migration_state(conn: AsyncConnection, migrations_dir: Path) -> MigrationState:
    current = await conn.run_sync(_current)
    return MigrationState(current=current, head=head_revision(migrations_dir))


async def upgrade(conn: AsyncConnection, migrations_dir: Path, revision: str = "head") -> None:
    cfg = alembic_config(migrations_dir)

    def _run(sync_conn: Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    await conn.run_sync(_run)


async def upgrade_url(url: URL, migrations_dir: Path) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await upgrade(conn, migrations_dir)
    finally:
        await engine.dispose()


def run_env() -> None:
    """Body of every service's migrations/env.py."""
    config = context.config
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run migrations with `fusion-prime migrate SERVICE`")

    async def _main() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.begin() as conn:
            await conn.run_sync(_run_with)
        await engine.dispose()

    asyncio.run(_main())


def _run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
