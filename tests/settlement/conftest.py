"""Settlement fixtures: a fresh migrated settlement database and an engine on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import MakeDatabase
from tests.settlement.factory import SPEC, engine_for


@pytest.fixture
async def db(make_database: MakeDatabase) -> str:
    return await make_database("settlement", SPEC.migrations_dir)


@pytest.fixture
async def engine(db: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(db) as eng:
        yield eng
