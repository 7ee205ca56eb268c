"""Schemathesis against every service's OpenAPI, over real HTTP on a real process.

Zero failures is the bar: no 5xx, responses as documented (status, content type, schema,
headers), problem+json on every error, invalid input refused. RELIABILITY_EXAMPLES raises
the example count per operation for a longer local hunt (`make soak` does).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.harness import ServiceProcess
from tests.reliability.contract import SERVICE_SECRETS, SERVICES, run_schemathesis
from tests.reliability.system import CaseRow, record

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "10"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("service", SERVICES)
async def test_schemathesis_finds_nothing(
    service: str, make_database: MakeDatabase, log_dir: Path, tmp_path: Path
) -> None:
    spec = load_spec(service)
    url = await make_database(service, spec.migrations_dir)
    proc = ServiceProcess.for_service(service, url, log_dir, extra_env=SERVICE_SECRETS[service])
    proc.start()
    try:
        await asyncio.to_thread(proc.wait_ready, 60)
        run = await asyncio.to_thread(
            run_schemathesis,
            service,
            proc.base_url,
            tmp_path / "st",
            max_examples=EXAMPLES,
            headers=dict(getattr(proc, "headers", {})),  # the API key once auth is in
        )
    finally:
        proc.terminate()
    generated = re.search(r"(\d+) generated", run.output)
    record(
        CaseRow(
            f"schemathesis-{service}",
            f"schemathesis, all phases, {EXAMPLES} examples per operation, real HTTP",
            int(generated.group(1)) if generated else 0,
            0,
            0,
            0,
            None,
            "passed" if run.returncode == 0 else "FAILURES (see the test output)",
        )
    )
    assert run.returncode == 0, run.output[-20000:]
