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
