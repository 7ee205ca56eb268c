"""Compliance fixtures: a migrated database per test, the app on it, the admin CLI."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fusion_prime.compliance.spec import SPEC
from tests.conftest import MakeDatabase
from tests.harness import asgi_client

FIXTURES = Path(__file__).parent / "fixtures"
WEBHOOK_SECRET = "test-webhook-secret-0123456789"


@pytest.fixture
async def db(make_database: MakeDatabase) -> str:
    return await make_database("compliance", SPEC.migrations_dir)


@pytest.fixture
async def client(db: str) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(SPEC, db, KYC_WEBHOOK_SECRET=WEBHOOK_SECRET) as c:
        yield c


@dataclass
class CliResult:
    exit_code: int
    output: str


async def run_cli(db: str, *args: str) -> CliResult:
    """`fusion-prime compliance ARGS` in a worker thread (the CLI runs its own event loop)."""
    from fusion_prime.cli import add_groups

    app = add_groups()

    def _invoke() -> CliResult:
        result = CliRunner().invoke(
            app, ["compliance", *args], env={"DATABASE_URL": db}, catch_exceptions=False
        )
        return CliResult(result.exit_code, result.output)

    return await asyncio.to_thread(_invoke)


async def load_fixture(db: str, name: str, *extra: str) -> CliResult:
    result = await run_cli(db, "load-sanctions", str(FIXTURES / name), *extra)
    assert result.exit_code == 0, result.output
    return result


def sign(body: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    ts = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def persona_event(
    event_id: str, name: str, inquiry_id: str, reference_id: str | None = None
) -> bytes:
    attributes: dict[str, Any] = {"status": name.split(".")[-1]}
    if reference_id is not None:
        attributes["reference-id"] = reference_id
    return json.dumps(
        {
            "data": {
                "type": "event",
                "id": event_id,
                "attributes": {
                    "name": name,
                    "created-at": "2026-12-01T07:00:00.000Z",
                    "payload": {
                        "data": {"type": "inquiry", "id": inquiry_id, "attributes": attributes}
                    },
                },
            }
        }
    ).encode()
