"""Contract fuzzing of one running service with the schemathesis command line.

The service is a real `fusion-prime serve` process on a real migrated database; schemathesis
reads the process's own /openapi.json and runs its phases (examples, coverage, fuzzing,
stateful) over every operation, with its checks plus ours (schemathesis_hooks.py).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness import REPO_ROOT, _env

ST = Path(os.sys.executable).with_name("st")  # the console script beside this interpreter
HOOKS = "tests.reliability.schemathesis_hooks"

# Secrets each service refuses to start without (test values, never real ones).
SERVICE_SECRETS: dict[str, dict[str, str]] = {
    "settlement": {"SETTLEMENT_WEBHOOK_KEY": "reliability-webhook-key-" + "k" * 32},
    "compliance": {"KYC_WEBHOOK_SECRET": "reliability-kyc-secret-0123456789"},
    "risk": {},
    "alerts": {"ALERTS_SECRET_KEY": "reliability-alerts-secret-key-" + "a" * 16},
    # the price sources point at a closed port: nothing leaves the machine
    "oracle": {
        "PRICE_UPDATE_INTERVAL": "3600",
        **{
            f"ORACLE_{s}_URL": "http://127.0.0.1:9"
            for s in ("COINBASE", "KRAKEN", "BINANCE", "COINGECKO")
        },
    },
}
SERVICES = tuple(SERVICE_SECRETS)

# Checks left out, each for a reason that holds for this API:
# - positive_data_acceptance: a schema-valid request may still be refused by a business
#   rule or name an id that does not exist (404/409/422 are right answers there);
# - max_response_time: no wall-time bounds on a shared 2-core machine.
EXCLUDED_CHECKS = ("positive_data_acceptance",)


@dataclass
class ContractRun:
    service: str
    returncode: int
    output: str
    report: Path


def run_schemathesis(
    service: str,
    base_url: str,
    report_dir: Path,
    *,
    max_examples: int,
    headers: dict[str, str] | None = None,
    seed: int = 15,
    timeout: float = 900,
) -> ContractRun:
    report_dir.mkdir(parents=True, exist_ok=True)
    junit = report_dir / f"{service}-junit.xml"
    args = [
        str(ST),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(EXCLUDED_CHECKS),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
        "--continue-on-failure",
    ]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    env = _env(None, {"SCHEMATHESIS_HOOKS": HOOKS, "NO_COLOR": "1", "COLUMNS": "160"})
    done = subprocess.run(
        args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    return ContractRun(service, done.returncode, done.stdout + done.stderr, junit)
