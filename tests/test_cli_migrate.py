"""`fusion-prime migrate SERVICE`: the separate deploy step needs DATABASE_URL and nothing else."""

from __future__ import annotations

import subprocess
import sys

from fusion_prime.platform.migrations import head_revision
from fusion_prime.services import load_spec
from tests.conftest import MakeDatabase
from tests.harness import REPO_ROOT, _env, fetchval


def _migrate(service: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = _env(database_url, None)
    for secret in load_spec(service).required_secrets:
        env.pop(secret, None)
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "migrate", service],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_migrate_needs_only_the_database_url(make_database: MakeDatabase) -> None:
    spec = load_spec("settlement")
    url = await make_database("settlement")  # empty database, no migrations yet
    result = _migrate("settlement", url)
    assert result.returncode == 0, result.stderr
    assert "settlement: migrations at head" in result.stdout
    revision = await fetchval(url, "SELECT version_num FROM alembic_version")
    assert revision == head_revision(spec.migrations_dir)


def test_migrate_without_database_url_refuses() -> None:
    result = _migrate("compliance", None)
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert "fp-compliance-db-connection-string" in result.stderr
