"""`fusion-prime verify`: ask running services whether they really use their database.

The incident's proposed check was grepping logs for "Using database URL: postgresql".
This asks each service's /health/ready instead, which checks the database on every call
(see platform/health.py), and judges the answer: HTTP 200, PostgreSQL, migrations at head,
a heartbeat written just now, and (for a production deploy) not the local embedded server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

READY_PATH = "/health/ready"


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str  # the /health/ready URL


@dataclass
class Verdict:
    endpoint: Endpoint
    status: int | None = None
    service: str | None = None
    dialect: str | None = None
    revision: str | None = None
    head: str | None = None
    embedded: bool | None = None
    heartbeat_age: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.endpoint.name,
            "url": self.endpoint.url,
            "ok": self.ok,
            "status": self.status,
            "service": self.service,
            "dialect": self.dialect,
            "revision": self.revision,
            "head": self.head,
            "embedded": self.embedded,
            "heartbeat_age_s": self.heartbeat_age,
            "problems": self.problems,
        }


def ready_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url if url.endswith(READY_PATH) else url + READY_PATH


def endpoint(spec: str, name: str | None = None) -> Endpoint:
    url = ready_url(spec)
    host = httpx.URL(url).host
    return Endpoint(name or host, url)


def read_targets_file(path: Path) -> list[Endpoint]:
    """One service per line: `URL` or `NAME URL`; blank lines and # comments ignored."""
    endpoints: list[Endpoint] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 1:
            endpoints.append(endpoint(parts[0]))
        elif len(parts) == 2:
            endpoints.append(endpoint(parts[1], parts[0]))
        else:
            raise ValueError(f"{path}: cannot read line {raw!r} (want `URL` or `NAME URL`)")
    return endpoints


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def judge(
    ep: Endpoint,
    status: int,
    body: Any,
    *,
    expect_production: bool,
    max_heartbeat_age: float,
    now: datetime | None = None,
) -> Verdict:
    """The verdict on one /health/ready answer (pure: tested without a network)."""
    v = Verdict(ep, status=status)
    if status != 200:
        v.problems.append(f"HTTP {status} (not ready)")
    if not isinstance(body, dict):
        v.problems.append("the answer is not a JSON object")
        return v
    v.service = body.get("service") if isinstance(body.get("service"), str) else None
    db = body.get("database")
    if not isinstance(db, dict):
        error = body.get("error")
        v.problems.append(f"no database report{f' ({error})' if error else ''}")
        return v
    v.dialect = db.get("dialect")
    v.revision = db.get("revision")
    v.head = db.get("head")
    embedded = db.get("embedded")
    v.embedded = embedded if isinstance(embedded, bool) else None
    if v.dialect != "postgresql":
        v.problems.append(f"database dialect is {v.dialect!r}, not postgresql")
    if db.get("at_head") is not True:
        v.problems.append(f"migrations not at head (revision {v.revision}, head {v.head})")
    if v.embedded is None:
        v.problems.append("the answer does not say whether the server is embedded")
    elif expect_production and v.embedded:
        v.problems.append("runs on the local embedded PostgreSQL, not a production server")
    beat = _parse_time(db.get("heartbeat_at"))
    if beat is None:
        v.problems.append("no heartbeat time")
    else:
        v.heartbeat_age = ((now or datetime.now(UTC)) - beat).total_seconds()
        if abs(v.heartbeat_age) > max_heartbeat_age:
            v.problems.append(
                f"heartbeat is {v.heartbeat_age:.0f} s old (limit {max_heartbeat_age:g} s)"
            )
    return v


def check(
    endpoints: Sequence[Endpoint],
    *,
    expect_production: bool = False,
    max_heartbeat_age: float = 120.0,
    timeout: float = 10.0,
    token: str | None = None,
) -> list[Verdict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verdicts: list[Verdict] = []
    with httpx.Client(timeout=timeout, headers=headers, follow_redirects=False) as client:
        for ep in endpoints:
            try:
                response = client.get(ep.url)
            except httpx.HTTPError as exc:
                verdicts.append(Verdict(ep, problems=[f"unreachable: {type(exc).__name__}"]))
                continue
            try:
                body: Any = response.json()
            except ValueError:
                body = None
            verdicts.append(
                judge(
                    ep,
                    response.status_code,
                    body,
                    expect_production=expect_production,
                    max_heartbeat_age=max_heartbeat_age,
                )
            )
    return verdicts


def local_endpoints(host: str = "127.0.0.1") -> list[Endpoint]:
    """The shipped services on their default ports, as `fusion-prime up` starts them."""
    from fusion_prime.services import all_specs

    return [Endpoint(s.name, ready_url(f"http://{host}:{s.default_port}")) for s in all_specs()]


def summary_rows(verdicts: Iterable[Verdict]) -> list[list[str]]:
    rows = []
    for v in verdicts:
        age = "" if v.heartbeat_age is None else f"{v.heartbeat_age:.1f} s"
        rows.append(
            [
                v.endpoint.name,
                v.endpoint.url,
                "" if v.status is None else str(v.status),
                v.dialect or "",
                v.revision or "",
                "" if v.embedded is None else str(v.embedded).lower(),
                age,
                "OK" if v.ok else "FAIL: " + "; ".join(v.problems),
            ]
        )
    return rows
