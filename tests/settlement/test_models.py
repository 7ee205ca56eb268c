"""models.py declares what the migrations create: same tables, columns, nullability."""

from __future__ import annotations

from fusion_prime.settlement import models
from tests.harness import fetch


async def test_models_match_the_migrated_schema(db: str) -> None:
    for table in models.metadata.sorted_tables:
        rows = await fetch(
            db,
            "SELECT column_name, is_nullable, data_type FROM information_schema.columns "
            "WHERE table_name = $1",
            table.name,
        )
        actual = {r["column_name"]: r["is_nullable"] == "YES" for r in rows}
        declared = {c.name: bool(c.nullable) and not c.primary_key for c in table.c}
        assert declared == actual, table.name


async def test_migration_downgrades_to_an_empty_database_and_back(db: str) -> None:
    """The downgrade is never run by the service; prove it leaves nothing behind."""
    from alembic import command
    from sqlalchemy import Connection

    from fusion_prime.platform.migrations import alembic_config, upgrade
    from tests.settlement.factory import SPEC, engine_for

    tables = (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_name <> 'alembic_version'"
    )
    before = {r["table_name"] for r in await fetch(db, tables)}
    assert {"escrows", "outbox", "inbox", "fp_heartbeat"} <= before

    def _downgrade(sync_conn: Connection) -> None:
        cfg = alembic_config(SPEC.migrations_dir)
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "base")

    async with engine_for(db) as engine, engine.begin() as conn:
        await conn.run_sync(_downgrade)
    assert await fetch(db, tables) == []
    assert await fetch(db, "SELECT 1 FROM pg_proc WHERE proname = 'settlement_refuse_change'") == []
    async with engine_for(db) as engine, engine.begin() as conn:
        await upgrade(conn, SPEC.migrations_dir)
    assert {r["table_name"] for r in await fetch(db, tables)} == before


async def test_migration_0002_stops_on_symbols_that_differ_only_in_case(db: str) -> None:
    """A database at 0001 may hold `usdc` next to `USDC`: the unique index cannot be built
    silently over that; the migration names the clash and leaves the database at 0001."""
    import pytest
    from alembic import command
    from sqlalchemy import Connection

    from fusion_prime.platform.migrations import alembic_config, upgrade
    from tests.settlement.factory import SPEC, engine_for

    def _downgrade(sync_conn: Connection) -> None:
        cfg = alembic_config(SPEC.migrations_dir)
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "0001")

    async with engine_for(db) as engine, engine.begin() as conn:
        await conn.run_sync(_downgrade)
    await fetch(
        db,
        "INSERT INTO assets (chain_id, address, symbol, decimals) "
        "VALUES (1, '0x1111111111111111111111111111111111111111', 'usdc', 6)",
    )
    with pytest.raises(RuntimeError, match="chain 1: USDC, usdc"):
        async with engine_for(db) as engine, engine.begin() as conn:
            await upgrade(conn, SPEC.migrations_dir)
    assert await fetch(db, "SELECT version_num FROM alembic_version") == [("0001",)]
