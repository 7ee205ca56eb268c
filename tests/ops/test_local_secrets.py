"""`fusion-prime up` generates a service's required secrets once per data directory."""

from __future__ import annotations

import stat
from pathlib import Path

from fusion_prime.ops.launcher import _local_secrets


def test_generated_once_kept_private_and_reused(tmp_path: Path) -> None:
    first = _local_secrets(tmp_path, {"SETTLEMENT_WEBHOOK_KEY"})
    key = first["SETTLEMENT_WEBHOOK_KEY"]
    assert len(key) >= 32
    path = tmp_path / "local-secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = _local_secrets(tmp_path, {"SETTLEMENT_WEBHOOK_KEY", "OTHER_KEY"})
    assert again["SETTLEMENT_WEBHOOK_KEY"] == key  # what was encrypted stays readable
    assert again["OTHER_KEY"] != key
