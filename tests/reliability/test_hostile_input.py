"""Hostile input beyond the schema, over real HTTP to real service processes: oversized and
deeply nested bodies, SQL metacharacters and NUL in every string field of every operation,
negative and 10^80 amounts, Unicode confusables in sanctions names, a large (1 million
rows under `make soak`) sanctions file with a bad last row, replayed and re-ordered
webhook signatures.

Every answer: no 5xx, errors as problem+json; afterwards the database holds nothing from
a refused request and the service still answers.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from fusion_prime.services import load_spec
from tests.compliance.conftest import persona_event, sign
from tests.hardening.test_regressions import ESCROW
from tests.harness import REPO_ROOT, DatabaseFactory, ServiceProcess, _env, count_rows, fetch
from tests.reliability.contract import SERVICE_SECRETS
from tests.reliability.hostile import NUL, SQL_METACHARACTERS, check_problem
from tests.reliability.system import CaseRow, record, sizes

HOSTILE_SERVICES = ("settlement", "compliance", "risk", "alerts", "oracle")
KYC_SECRET = SERVICE_SECRETS["compliance"]["KYC_WEBHOOK_SECRET"]


@pytest.fixture(scope="module")
async def procs(
    db_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, tuple[ServiceProcess, str]]]:
    """One real process per service on its own fresh database: name -> (process, db URL)."""
    log_dir = tmp_path_factory.mktemp("hostile-logs")
    dbs = {s: await db_factory.create(s, load_spec(s).migrations_dir) for s in HOSTILE_SERVICES}
    started = {
        s: ServiceProcess.for_service(s, url, log_dir, extra_env=SERVICE_SECRETS[s])
        for s, url in dbs.items()
    }
    try:
        for p in started.values():
            p.start()
        for p in started.values():
            await asyncio.to_thread(p.wait_ready, 90)
        yield {s: (p, dbs[s]) for s, p in started.items()}
    finally:
        for p in started.values():
            p.terminate()
        for url in dbs.values():
            await db_factory.drop(url)


def _auth(proc: ServiceProcess) -> dict[str, str]:
    """The process's API key header (issue 13's harness; none before auth existed)."""
    return dict(getattr(proc, "headers", {}))


async def _still_serving(proc: ServiceProcess) -> None:
    assert proc.process is not None
    assert proc.process.poll() is None, proc.log_text()[-2000:]
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{proc.base_url}/health/ready")).status_code == 200


def _json_operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(method, path with placeholder ids, JSON body schema or None) of every operation."""
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            yield method.upper(), path, (body or {}).get("schema")


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _string_fields(doc: dict[str, Any], schema: dict[str, Any], prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """Paths of every string-typed property (through objects and anyOf), for the bodies."""
    schema = _resolve(doc, schema)
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from _string_fields(doc, alt, prefix)
    if schema.get("type") == "string":
        yield prefix
    for name, sub in schema.get("properties", {}).items():
        yield from _string_fields(doc, sub, (*prefix, name))


def _skeleton(doc: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> Any:
    """A minimal body: each required property with a plain value of its type."""
    schema = _resolve(doc, schema)
    if depth > 6:
        return None
    if "anyOf" in schema:
        return _skeleton(doc, schema["anyOf"][0], depth + 1)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            k: _skeleton(doc, v, depth + 1)
            for k, v in schema.get("properties", {}).items()
            if k in schema.get("required", [])
        }
    return {"string": "x", "integer": 1, "number": 1, "boolean": True, "array": []}.get(
        str(kind), None
    )


def _set(body: Any, path: tuple[str, ...], value: str) -> Any:
    out = copy.deepcopy(body) if isinstance(body, dict) else {}
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if path:
        node[path[-1]] = value
    return out


async def test_sql_metacharacters_and_nul_in_every_string_field(
    procs: dict[str, tuple[ServiceProcess, str]],
) -> None:
    """Every string of every JSON body, every path parameter and one query string get each
    metacharacter string: never a 5xx, and the tables are all still there afterwards."""
    sent = 0
    for service, (proc, db) in procs.items():
        async with httpx.AsyncClient(
            base_url=proc.base_url, timeout=30, headers=_auth(proc)
        ) as http:
            doc = (await http.get("/openapi.json")).json()
            for method, path, schema in _json_operations(doc):
                for value in [*SQL_METACHARACTERS, NUL]:
                    url = path
                    for part in path.split("/"):
                        if part.startswith("{"):
                            url = url.replace(part, quote(value, safe="") or "%20")
                    headers = {"Idempotency-Key": f"hostile-{sent}"}
                    if schema is None:
                        r = await http.request(method, url, params={"q": value}, headers=headers)
                        check_problem(r, f"{service} {method} {url}")
                        sent += 1
                        continue
                    base = _skeleton(doc, schema)
                    for field in _string_fields(doc, schema) or [()]:
                        r = await http.request(
                            method, url, json=_set(base, field, value), headers=headers
                        )
                        check_problem(r, f"{service} {method} {url} {'.'.join(field)}={value!r}")
                        sent += 1
        tables = await count_rows(db, "pg_tables", "schemaname = 'public'")
        assert tables > 3
        await _still_serving(proc)
    assert sent > 500
    record(
        CaseRow(
            "sql-metacharacters",
            "SQL metacharacters and NUL in every string field/path parameter of every operation",
            sent,
            0,
            0,
            0,
            None,
            "no 5xx, every error problem+json, tables intact, services up",
        )
    )


OPEN_PATHS = {"/health/live", "/health/ready", "/metrics"}
# provider callbacks authenticate by their signature (signed_by), not by an API key
SIGNED_PATHS = {"/webhooks/kyc-provider", "/providers/sms/status"}


async def test_every_operation_without_a_key_is_401_never_5xx(
    procs: dict[str, tuple[ServiceProcess, str]],
) -> None:
    """Issue 13's contract from outside: no Authorization (or a wrong one) is a 401
    problem on every route but health and metrics; nothing is stored."""
    refused = 0
    for service, (proc, _) in procs.items():
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30) as http:
            doc = (await http.get("/openapi.json", headers=_auth(proc))).json()
            for method, path, schema in _json_operations(doc):
                if path in OPEN_PATHS:
                    continue
                url = re.sub(r"\{[^/]+\}", "x1", path)
                body = _skeleton(doc, schema) if schema else None
                for headers in ({}, {"Authorization": "Bearer fpk_not.a-real-key"}):
                    r = await http.request(method, url, json=body, headers=headers)
                    check_problem(r, f"{service} {method} {url} without a valid key")
                    if path not in SIGNED_PATHS:
                        assert r.status_code == 401, (service, method, path, r.text)
                    refused += 1
    assert refused > 50
    record(
        CaseRow(
            "no-api-key",
            "every operation of every service without a key, and with a wrong one",
            refused,
            0,
            0,
            0,
            None,
            "401 problem+json each, no 5xx",
        )
    )


@pytest.mark.parametrize("service", ["settlement", "compliance", "risk"])
async def test_ten_megabyte_and_deeply_nested_bodies_are_refused(
    service: str, procs: dict[str, tuple[ServiceProcess, str]]
) -> None:
    """A 4xx refusal (413 once the body limit lands, 422 before), never a 5xx."""
    proc, db = procs[service]
    target = {
        "settlement": ("POST", "/commands"),
        "compliance": ("POST", "/sanctions/screen"),
        "risk": ("PUT", "/accounts/acct-big/positions"),
    }[service]
    big = json.dumps({"names": ["x" * (10 * 1024 * 1024)]}).encode()
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    nested_obj = ('{"a":' * 50_000 + "1" + "}" * 50_000).encode()
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=120, headers=_auth(proc)) as http:
        for body in (big, nested, nested_obj, b"\xff" * 1024):
            r = await http.request(
                *target,
                content=body,
                headers={"content-type": "application/json", "Idempotency-Key": "big"},
            )
            check_problem(r, f"{service} {target} {len(body)} bytes")
            assert 400 <= r.status_code < 500
    await _still_serving(proc)
    record(
        CaseRow(
            f"oversized-{service}",
            "10 MB body, JSON nested 100,000 / 50,000 deep, invalid UTF-8",
            4,
            0,
            0,
            0,
            None,
            "4xx each, process alive (nesting used to kill settlement with SIGSEGV)",
        )
    )
    if service == "risk":
        assert await count_rows(db, "accounts") == 0
    if service == "settlement":
        assert await count_rows(db, "commands") == 0


# integer base units (settlement amounts, risk positions): each of these is refused
BASE_UNIT_REFUSED = ["-1", "-0.0", str(10**80), "1e80", "1.5", "0x10", "", "NaN", "Infinity"]
# AML amounts are decimals with 2 places, > 0, at most 18 digits
AML_REFUSED = ["-1", "0", "-0", str(10**80), "1e80", "0.001", "NaN", "Infinity", "0x10"]


@pytest.mark.parametrize("amount", BASE_UNIT_REFUSED)
async def test_negative_and_huge_token_amounts_are_refused_and_nothing_is_stored(
    amount: str, procs: dict[str, tuple[ServiceProcess, str]]
) -> None:
    (settlement, sdb), (risk, rdb) = procs["settlement"], procs["risk"]
    key = f"amount-{amount}"
    account = f"acct-amount-{abs(hash(amount)) % 10**8}"
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            f"{settlement.base_url}/commands",
            json={**ESCROW, "amount": amount},
            headers={"Idempotency-Key": key, **_auth(settlement)},
        )
        check_problem(r, f"settlement amount {amount}")
        assert r.status_code == 422, r.text
        r = await http.put(
            f"{risk.base_url}/accounts/{account}/positions",
            json={"positions": [{"asset": "ETH", "collateral": amount, "decimals": 18}]},
            headers=_auth(risk),
        )
        check_problem(r, f"risk collateral {amount}")
        assert r.status_code == 422, r.text
    assert await count_rows(sdb, "commands", "idempotency_key = $1", key) == 0
    assert await count_rows(rdb, "positions", "account_id = $1", account) == 0


@pytest.mark.parametrize("amount", AML_REFUSED)
async def test_negative_and_huge_transaction_amounts_are_refused_and_nothing_is_stored(
    amount: str, procs: dict[str, tuple[ServiceProcess, str]]
) -> None:
    compliance, cdb = procs["compliance"]
    user = f"u-amount-{abs(hash(amount)) % 10**8}"
    async with httpx.AsyncClient(timeout=30, headers=_auth(compliance)) as http:
        r = await http.post(
            f"{compliance.base_url}/aml/screen",
            json={
                "user_id": user,
                "amount": amount,
                "currency": "USD",
                "type": "deposit",
                "occurred_at": "2026-01-01T00:00:00+00:00",
            },
        )
    check_problem(r, f"aml amount {amount}")
    assert r.status_code == 422, r.text
    assert await count_rows(cdb, "aml_transactions", "user_id = $1", user) == 0


def _load_sanctions(db: str, path: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`fusion-prime compliance load-sanctions FILE` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "compliance", "load-sanctions", str(path)],
        env=_env(db, {"COLUMNS": "200"}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SDN_ROW = '{id},"{name}","individual","SDGT",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n'


async def test_a_large_sanctions_file_with_a_bad_last_row_loads_nothing(
    procs: dict[str, tuple[ServiceProcess, str]], tmp_path: Path
) -> None:
    """100,000 rows here; `make soak` runs the 1 million-row file (about 2 min of parsing
    on the 2-core machine, too long for every `make test`)."""
    _, db = procs["compliance"]
    rows = int(sizes()["csv_rows"])
    path = tmp_path / "sdn.csv"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(SDN_ROW.format(id=50_000 + i, name=f"PERSON {i}, Test"))
        fh.write('99999999,"SHORT ROW",-0- \n')
    started = time.monotonic()
    done = await asyncio.to_thread(_load_sanctions, db, path)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"line {rows + 1}" in done.stdout + done.stderr
    assert await count_rows(db, "sanctions_entities") == 0
    assert await count_rows(db, "sanctions_names") == 0
    assert await count_rows(db, "sanctions_list_versions") == 0
    record(
        CaseRow(
            "csv-1m-bad-last-row",
            f"sanctions sdn.csv of {rows:,} rows, row {rows + 1:,} malformed",
            rows + 1,
            0,
            0,
            0,
            None,
            f"refused whole, naming line {rows + 1:,}, in {took:.0f} s; nothing stored",
        )
    )


CONFUSABLES = [
    "K\u041eVALENKO, Dmitri",  # Cyrillic capital O
    "KOVALENKO, Dm\u0456tri",  # Cyrillic small i
    "\uff2b\uff2f\uff36\uff21\uff2c\uff25\uff2e\uff2b\uff2f Dmitri",  # fullwidth
    "KOVA\u200bLENKO Dmitri",  # zero-width space
    "K\u0335OVALENKO Dmitri",  # combining overlay
    "kovalenko  DMITRI",
]


async def test_unicode_confusables_of_a_listed_name_still_hit(
    procs: dict[str, tuple[ServiceProcess, str]], tmp_path: Path
) -> None:
    compliance, db = procs["compliance"]
    path = tmp_path / "sdn.csv"
    path.write_text(SDN_ROW.format(id=77001, name="KOVALENKO, Dmitri"), encoding="utf-8")
    done = await asyncio.to_thread(_load_sanctions, db, path)
    assert done.returncode == 0, done.stdout + done.stderr
    misses = []
    async with httpx.AsyncClient(
        base_url=compliance.base_url, timeout=30, headers=_auth(compliance)
    ) as http:
        for name in CONFUSABLES:
            r = await http.post("/sanctions/screen", json={"names": [name]})
            check_problem(r, f"screen {name!r}")
            assert r.status_code == 200, r.text
            body = r.json()
            if body["status"] != "hit":
                misses.append((name, body))
        clean = await http.post("/sanctions/screen", json={"names": ["Maria Gonzalez"]})
        assert clean.status_code == 200
    assert not misses, misses
    assert clean.json()["status"] == "clear", clean.json()


async def test_replayed_and_reordered_webhook_signatures(
    procs: dict[str, tuple[ServiceProcess, str]],
) -> None:
    """A replay changes nothing, a stale or future timestamp is refused, a signature moved
    to another body is refused, and an event arriving before its predecessor neither
    crashes nor applies twice."""
    compliance, db = procs["compliance"]
    url = f"{compliance.base_url}/webhooks/kyc-provider"

    async def post(body: bytes, header: str | None) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if header is not None:
            headers["Persona-Signature"] = header
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(url, content=body, headers=headers)
        check_problem(r, f"webhook {header}")
        return r

    async with httpx.AsyncClient(
        base_url=compliance.base_url, timeout=30, headers=_auth(compliance)
    ) as http:
        case = (await http.post("/kyc/cases", json={"user_id": "u-replay"})).json()
        await http.post("/kyc/cases", json={"user_id": "u-skew"})
    completed = persona_event("evt_r1", "inquiry.completed", "inq_R", reference_id="u-replay")
    approved = persona_event("evt_r2", "inquiry.approved", "inq_R")
    now = int(time.time())
    # re-ordered: the approval arrives before the completion that binds the inquiry to the
    # user's case; it is refused (not consumed) so the provider's retry still applies it
    early = await post(approved, sign(approved, secret=KYC_SECRET, at=now))
    assert early.status_code == 409, early.text
    assert await count_rows(db, "kyc_webhook_events", "event_id = 'evt_r2'") == 0
    first = await post(completed, sign(completed, secret=KYC_SECRET, at=now))
    assert first.status_code == 200, first.text
    again = await post(completed, sign(completed, secret=KYC_SECRET, at=now))
    assert again.status_code == 200, again.text
    assert again.json()["outcome"] == "duplicate", again.text
    retried = await post(approved, sign(approved, secret=KYC_SECRET, at=int(time.time())))
    assert retried.status_code == 200, retried.text
    assert retried.json()["outcome"] == "applied: verified", retried.text
    # a captured header on another body; +-5 min skew beyond the tolerance; swapped fields
    other = persona_event("evt_r3", "inquiry.declined", "inq_Z")
    stolen = sign(completed, secret=KYC_SECRET, at=now)
    assert (await post(other, stolen)).status_code == 401
    # a sender clock 6 min off is refused either way (tolerance 300 s); 4 min off passes
    for skew in (-360, 360):
        stale = sign(other, secret=KYC_SECRET, at=int(time.time()) + skew)
        assert (await post(other, stale)).status_code == 401
    skewed = persona_event("evt_r4", "inquiry.completed", "inq_S", reference_id="u-skew")
    ok = await post(skewed, sign(skewed, secret=KYC_SECRET, at=int(time.time()) - 240))
    assert ok.status_code == 200, ok.text
    t, v1 = sign(other, secret=KYC_SECRET, at=now).split(",")
    swapped = await post(other, f"{v1},{t}")
    assert swapped.status_code == 409  # signature fine (field order is free), inquiry unknown
    # each event id stored once whatever the order and the replays
    ids = [r["event_id"] for r in await fetch(db, "SELECT event_id FROM kyc_webhook_events")]
    assert len(ids) == len(set(ids))
    assert {"evt_r1", "evt_r2", "evt_r4"} <= set(ids)
    assert "evt_r3" not in ids
    history = await fetch(
        db, "SELECT to_status FROM kyc_status_history WHERE case_id = $1::uuid", case["id"]
    )
    assert [h["to_status"] for h in history] == ["pending", "in_review", "verified"]
