"""Helpers for the audit tests: write a small repository tree and audit it."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from fusion_prime.ops.audit.engine import run_audit
from fusion_prime.ops.audit.model import Finding

AuditTree = Callable[[dict[str, str]], list[Finding]]


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture
def audit_tree(tmp_path: Path) -> AuditTree:
    """`audit_tree({path: text})` -> the findings of auditing that tree."""
    counter = iter(range(1000))

    def _audit(files: dict[str, str]) -> list[Finding]:
        root = write_tree(tmp_path / f"repo{next(counter)}", files)
        return run_audit(root).findings

    return _audit


def rules_of(findings: list[Finding]) -> list[str]:
    return sorted(f.rule for f in findings)
