"""Migration 0006's address / hash checks accept exactly what the regexes of 0001/0003 did.

The bounded-repeat regex (`^0x[0-9a-f]{40}$`) was replaced by `length(col) = 42 AND col ~
'^0x[0-9a-f]*$'` (same constraint names) because it was a large part of the PostgreSQL
work per ingested event. Checked on the migrated database: every replaced constraint's
expression, evaluated by PostgreSQL on a set of near misses, gives the old regex's answer,
and real writes are refused as before.
"""

from __future__ import annotations

import importlib.util

import asyncpg
import pytest

from fusion_prime.platform.admin import asyncpg_dsn
from tests.settlement.factory import SPEC

_spec = importlib.util.spec_from_file_location(
    "settlement_0006", SPEC.migrations_dir / "versions" / "0006_ingest_cost.py"
)
assert _spec is not None
assert _spec.loader is not None
m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(m)

HEX40 = "ab" * 20
HEX64 = "cd" * 32

SAMPLES = [
    "0x" + HEX40,
    "0x" + HEX64,
    "0x" + "0" * 40,
    "0x" + HEX40[:-1],  # one digit short
    "0x" + HEX40 + "a",  # one digit long
    "0x" + HEX64[:-1],
    "0x" + HEX64 + "0",
    "0X" + HEX40,  # upper-case prefix
    "0x" + HEX40.upper(),  # checksummed / upper-case digits
    "0x" + HEX40[:-1] + "g",  # not hex
    "0x" + HEX40[:-1] + "\n",  # a trailing newline instead of a digit
    "0x" + HEX40 + "\n",  # a trailing newline after 40 digits
    "\n0x" + HEX40[1:],
    "0x" + HEX40[:-1] + "٣",  # a non-ASCII digit (one character, two bytes)
    "0x" + HEX40[:-2] + "é",  # a two-byte character: 42 bytes, 41 characters
    "x" + HEX40 + "a",
    HEX40 + "00",
    "",
    "0x",
    " 0x" + HEX40[1:],
]


async def test_every_cheap_check_answers_as_the_bounded_regex(db: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        rows = await conn.fetch(
            "SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def "
            "FROM pg_constraint WHERE contype = 'c'"
        )
        defs = {(r["tbl"], r["conname"]): r["def"] for r in rows}
        assert len(m.CHECKS) == 21
        for table, column, length in m.CHECKS:
            definition = defs[(table, f"{table}_{column}_check")]
            assert "length(" in definition, definition
            assert "{" not in definition, definition
            expression = definition.removeprefix("CHECK ").replace(column, "$1::text")
            for value in [*SAMPLES, None]:
                new = await conn.fetchval(f"SELECT {expression}", value)
                old = await conn.fetchval(
                    f"SELECT $1::text ~ '^0x[0-9a-f]{{{length - 2}}}$'", value
                )
                # a CHECK passes unless the expression is false (NULL passes)
                assert (new is not False) == (old is not False), (table, column, value)
    finally:
        await conn.close()


async def test_writes_are_refused_as_before(db: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    insert = (
        "INSERT INTO chain_events (chain_id, tx_hash, log_index, block_number, event_type, "
        "escrow_address, envelope_id, data) VALUES (1, $1, 0, 1, 'escrow.deployed', $2, "
        "gen_random_uuid(), '{}')"
    )
    try:
        for tx, escrow, constraint in (
            ("0x" + HEX64.upper(), "0x" + HEX40, "chain_events_tx_hash_check"),
            ("0x" + HEX64, "0x" + HEX40 + "a", "chain_events_escrow_address_check"),
            ("0x" + HEX64, "0x" + HEX40[:-1] + "\n", "chain_events_escrow_address_check"),
        ):
            with pytest.raises(asyncpg.CheckViolationError) as refused:
                await conn.execute(insert, tx, escrow)
            assert refused.value.constraint_name == constraint
        await conn.execute(insert, "0x" + HEX64, "0x" + HEX40)
        assert await conn.fetchval("SELECT count(*) FROM chain_events") == 1
        fillfactor = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE relname = 'escrows'"
        )
        assert fillfactor == ["fillfactor=50"]
    finally:
        await conn.close()
