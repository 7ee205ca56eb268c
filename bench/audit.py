"""`fusion-prime audit` on a generated repository of 1,000 Python and YAML files.

The repository (written to a temp dir, deleted afterwards) has 100 services laid out like
the incident report's: services/<name>/cloudbuild.yaml plus 9 Python modules of ~60 lines.
Every 4th service repeats the incident (no DATABASE_URL, a SQLite default), so the run
checks real findings, not an empty pass. Target: <= 5 s for the 1,000 files.

Baselines measured in the same run:
- parse floor: read every file and parse it (ast.parse, yaml.compose with libyaml), no
  rules: the least any parser-based audit must spend;
- pure-Python YAML: the full audit with PyYAML's pure-Python loader instead of libyaml.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

import fusion_prime.ops.audit.deploy as deploy_module
from fusion_prime.ops.audit.engine import discover, run_audit

SERVICES = 100
MODULES_PER_SERVICE = 9

MODULE = '''"""Module {i} of service {name}."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Record{i}:
    id: int
    amount: str
    status: str = "pending"


def load_{i}(rows: list[dict[str, str]]) -> list[Record{i}]:
    out = []
    for n, row in enumerate(rows):
        if row.get("status") == "void":
            continue
        out.append(Record{i}(n, row["amount"], row.get("status", "pending")))
    return out


def settle_{i}(records: list[Record{i}]) -> dict[str, int]:
    totals: dict[str, int] = {{}}
    for r in records:
        totals[r.status] = totals.get(r.status, 0) + 1
    return totals


def timeout_{i}() -> float:
    return float(os.environ.get("REQUEST_TIMEOUT", "5"))


class Service{i}:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def handle(self, payload: dict[str, str]) -> dict[str, str]:
        self.calls += 1
        if not payload:
            raise ValueError("empty payload")
        return {{"service": self.name, "id": payload.get("id", "")}}
'''

DB_GOOD = """
def database_url() -> str:
    return os.environ["DATABASE_URL"]
"""
DB_BAD = """
def database_url() -> str:
    return os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///./{name}.db")
"""

CLOUDBUILD = """steps:
  - name: gcr.io/cloud-builders/docker
    args: ['build', '-t', 'us-central1-docker.pkg.dev/$PROJECT_ID/svc/{name}:$SHORT_SHA', '.']
  - name: gcr.io/cloud-builders/docker
    args: ['push', 'us-central1-docker.pkg.dev/$PROJECT_ID/svc/{name}:$SHORT_SHA']
  - name: gcr.io/google.com/cloudsdktool/cloud-sdk
    entrypoint: gcloud
    args:
      - run
      - deploy
      - {name}
      - --image=us-central1-docker.pkg.dev/$PROJECT_ID/svc/{name}:$SHORT_SHA
      - --region=us-central1
      - --no-allow-unauthenticated
      - --set-env-vars=GCP_PROJECT=fusion-prime,LOG_LEVEL=INFO
{db}images:
  - us-central1-docker.pkg.dev/$PROJECT_ID/svc/{name}:$SHORT_SHA
"""
DB_FLAGS = """      - --set-secrets=DATABASE_URL=fp-{name}-db-connection-string:latest
      - --add-cloudsql-instances=fusion-prime:us-central1:fp-{name}-db
"""


def generate(root: Path) -> int:
    """Write the repository; return the number of findings it must produce."""
    expected = 0
    for s in range(SERVICES):
        name = f"svc{s:03d}"
        broken = s % 4 == 0
        base = root / "services" / name
        (base / "app").mkdir(parents=True)
        db = "" if broken else DB_FLAGS.format(name=name)
        (base / "cloudbuild.yaml").write_text(CLOUDBUILD.format(name=name, db=db))
        for i in range(MODULES_PER_SERVICE):
            text = MODULE.format(i=i, name=name)
            if i == 0:
                text += (DB_BAD if broken else DB_GOOD).format(name=name)
            (base / "app" / f"m{i}.py").write_text(text)
        if broken:
            expected += 3  # FP101 + FP103 on the deploy file, FP201 in the code
    return expected


def parse_floor(root: Path) -> tuple[int, float]:
    started = time.perf_counter()
    n = 0
    for _, kind, path in discover(root, []):
        text = path.read_text()
        if kind == "python":
            ast.parse(text)
        else:
            yaml.compose(text, Loader=yaml.CSafeLoader)
        n += 1
    return n, time.perf_counter() - started


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fp-bench-audit-"))
    try:
        expected = generate(tmp)
        run_audit(tmp / "services" / "svc001")  # import/warm-up on a small subtree
        result = run_audit(tmp)
        assert len(result.findings) == expected, (len(result.findings), expected)
        floor_files, floor_s = parse_floor(tmp)
        fast_loader = deploy_module._Loader
        deploy_module._Loader = yaml.SafeLoader
        try:
            pure = run_audit(tmp)
        finally:
            deploy_module._Loader = fast_loader
        assert len(pure.findings) == expected
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    table = Table(title=f"fusion-prime audit on {result.files} generated files (target <= 5 s)")
    for col in ("run", "files", "findings", "seconds", "files/s"):
        table.add_column(col, justify="right" if col != "run" else "left")
    rows = [
        ("fusion-prime audit (libyaml)", result.files, len(result.findings), result.seconds),
        ("baseline: pure-Python YAML audit", pure.files, len(pure.findings), pure.seconds),
        ("baseline: parse floor (no rules)", floor_files, 0, floor_s),
    ]
    for label, files, findings, seconds in rows:
        table.add_row(label, str(files), str(findings), f"{seconds:.2f}", f"{files / seconds:,.0f}")
    Console().print(table)
    verdict = "meets" if result.seconds <= 5 else "MISSES"
    Console().print(f"{verdict} the 5 s target ({result.seconds:.2f} s)")


if __name__ == "__main__":
    main()
