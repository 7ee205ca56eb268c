"""`fusion-prime demo`: one scenario through the running local system (`fusion-prime up`).

Everything goes through the services' HTTP APIs and the local chain, as a client would:
feeds on the local price source, risk parameters, three accounts with positions, alert
contacts with email, two escrows on the local chain, KYC/AML/sanctions records; then the
price of ETH drops by 30% and the demo waits until risk moved the exposed accounts to
margin_call / liquidation and the alerts service's emails arrived at the development
SMTP server. It prints what it saw and where to look in the console.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from fusion_prime.platform.embedded import data_dir_from_env

# local price source symbols per feed (Coinbase, Kraken, Binance shapes), start prices
FEEDS: dict[str, tuple[tuple[tuple[str, str], ...], Decimal]] = {
    "ETH-USD": ((("coinbase", "ETH-USD"), ("kraken", "XETHZUSD"), ("binance", "ETHUSDT")),
                Decimal("3000")),
    "WBTC-USD": ((("coinbase", "BTC-USD"), ("kraken", "XXBTZUSD"), ("binance", "BTCUSDT")),
                 Decimal("60000")),
    "USDC-USD": ((("coinbase", "USDC-USD"), ("kraken", "USDCUSD"), ("binance", "USDCUSDT")),
                 Decimal("1")),
}  # fmt: skip
PARAMS = {
    "ETH": {"ltv": "0.80", "liquidation_threshold": "0.825", "decimals": 18},
    "WBTC": {"ltv": "0.70", "liquidation_threshold": "0.75", "decimals": 8},
    "USDC": {"ltv": "0.85", "liquidation_threshold": "0.88", "decimals": 6},
}
CRASHED = "ETH"
DROP = Decimal("0.30")
# account -> positions (asset, collateral units, debt units) and the tier expected after
ACCOUNTS: dict[str, tuple[list[tuple[str, int, int]], str]] = {
    "demo-alice": ([("ETH", 10 * 10**18, 0), ("USDC", 0, 19_000 * 10**6)], "liquidation"),
    "demo-bob": ([("ETH", 10 * 10**18, 0), ("USDC", 0, 16_000 * 10**6)], "margin_call"),
    "demo-carol": ([("WBTC", 1 * 10**8, 0), ("USDC", 0, 10_000 * 10**6)], "healthy"),
}
WAIT = 120.0
# what the subject of the alert email for a tier says (alerts' templates)
SUBJECTS = {"margin_call": "MARGIN CALL", "liquidation": "LIQUIDATION"}


class DemoError(Exception):
    pass


class Api:
    def __init__(self, urls: dict[str, str], key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.urls = urls
        self.http = httpx.Client(timeout=15.0, headers=headers)

    def call(self, method: str, service: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, self.urls[service].rstrip("/") + path, **kw)
        if r.status_code >= 300:
            raise DemoError(f"{method} {service}{path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None


def _wait(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except (DemoError, httpx.HTTPError) as exc:
            last = exc
        time.sleep(0.5)
    raise DemoError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last})" if last else "")
    )


def _set_prices(api: Api, factor: Decimal) -> None:
    for sources, start in FEEDS.values():
        for _, symbol in sources:
            price = start * (factor if symbol in _symbols(CRASHED) else 1)
            api.call("PUT", "dev_local", f"/prices/{symbol}", json={"price": format(price, "f")})


def _symbols(asset: str) -> set[str]:
    return {s for _, s in FEEDS[f"{asset}-USD"][0]}


def run_demo(data_dir: Path | None) -> int:
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # keep URLs whole in a file or pipe
    data_dir = (data_dir or data_dir_from_env()).resolve()
    record = data_dir / "local-urls.json"
    if not record.exists():
        out.print(f"[red]no running local system recorded in {record}[/red]: start `make up` first")
        return 2
    urls: dict[str, str] = json.loads(record.read_text())
    key_file = data_dir / "admin.key"
    key = key_file.read_text().strip() if key_file.exists() else None
    api = Api(urls, key)
    try:
        return _scenario(api, urls, data_dir, out)
    except (DemoError, httpx.HTTPError) as exc:
        out.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        api.http.close()


def _scenario(api: Api, urls: dict[str, str], data_dir: Path, out: Console) -> int:
    run = uuid.uuid4().hex[:6]
    services = ("settlement", "compliance", "risk", "alerts", "oracle")
    _wait(
        "every service to be ready",
        lambda: all(api.call("GET", s, "/health/ready")["status"] == "ok" for s in services),
        timeout=90,
    )
    out.print("[bold]1.[/bold] prices on the local price source, feeds and risk parameters")
    _set_prices(api, Decimal(1))
    for pair, (sources, _) in FEEDS.items():
        api.call(
            "PUT", "oracle", f"/feeds/{pair}",
            json={"sources": [{"kind": k, "symbol": s} for k, s in sources], "quorum": 2,
                  "heartbeat_seconds": 60, "max_source_age_seconds": 120},
        )  # fmt: skip
    for asset, p in PARAMS.items():
        api.call(
            "PUT", "risk", f"/risk-parameters/{asset}",
            json={**p, "liquidation_bonus": "0.05", "max_price_age_seconds": 3600},
        )  # fmt: skip
    _wait(
        "the oracle's first round on the local prices",
        lambda: all(
            api.call("GET", "oracle", f"/prices/{pair}").get("price") is not None for pair in FEEDS
        ),
    )
    out.print("[bold]2.[/bold] email contacts in alerts, then accounts with positions")
    # contacts and preferences first: whatever risk says of an account from its first
    # evaluation on (a price it has not received yet is price_unavailable) reaches its owner
    emails: dict[str, str] = {}
    for account in ACCOUNTS:
        emails[account] = f"{account}+{run}@demo.fusion-prime.invalid"
        api.call(
            "POST", "alerts", "/contacts",
            json={"account_id": account, "name": account,
                  "channels": [{"channel": "email", "address": emails[account]}]},
        )  # fmt: skip
        api.call(
            "PUT", "alerts", f"/accounts/{account}/preferences",
            json={"kinds": ["warning", "margin_call", "liquidation", "reminder",
                            "price_unavailable"], "channels": ["email"]},
        )  # fmt: skip
    for account, (positions, _) in ACCOUNTS.items():
        body = {
            "positions": [
                {"asset": a, "collateral": str(c), "debt": str(d),
                 "decimals": PARAMS[a]["decimals"]}
                for a, c, d in positions
            ]
        }  # fmt: skip
        api.call("PUT", "risk", f"/accounts/{account}/positions", json=body)
    _wait(
        "risk to evaluate the accounts healthy",
        lambda: all(
            api.call("GET", "risk", f"/accounts/{a}").get("status") == "healthy" for a in ACCOUNTS
        ),
    )
    out.print("[bold]3.[/bold] escrows on the local chain and compliance records")
    escrows = _escrows(api, data_dir, out)
    compliance = _compliance(api, run)
    out.print(f"[bold]4.[/bold] {CRASHED} drops by {DROP:.0%} on every local source")
    _set_prices(api, 1 - DROP)

    def moved() -> dict[str, str] | None:
        now = {a: api.call("GET", "risk", f"/accounts/{a}").get("status") for a in ACCOUNTS}
        return now if all(now[a] == want for a, (_, want) in ACCOUNTS.items()) else None

    statuses = _wait("risk to move the exposed accounts", moved)

    def delivered() -> list[dict[str, Any]] | None:
        got = api.call("GET", "dev_local", "/mail/messages", params={"limit": 500})["items"]
        exposed = [(a, want) for a, (_, want) in ACCOUNTS.items() if want != "healthy"]
        # the mail of the tier each exposed account moved to, not any earlier one
        return got if all(any(emails[a] in m["to"] and SUBJECTS[want] in m["subject"] for m in got)
                          for a, want in exposed) else None  # fmt: skip

    mail = _wait("the alert emails at the development SMTP server", delivered)
    _report(out, urls, statuses, emails, mail, escrows, compliance)
    return 0


def _escrows(api: Api, data_dir: Path, out: Console) -> list[dict[str, Any]]:
    from fusion_prime.ops.localchain import demo_escrow, deployment_file

    record = deployment_file(data_dir)
    if not record.exists():
        raise DemoError(
            "no local chain: install anvil with `bash tools/evm/install.sh` (needs npm) and "
            "restart `make up`; the demo's escrows go on that chain"
        )
    chain = json.loads(record.read_text())
    made = [demo_escrow(chain["url"], chain["factory"], 10**16 * (i + 1)) for i in range(2)]

    def approved() -> list[dict[str, Any]] | None:
        now = [api.call("GET", "settlement", f"/escrows/{m['escrow']}") for m in made]
        return now if all(e.get("status") == "approved" for e in now) else None

    found = _wait("settlement's relayer to publish the escrows as approved", approved)
    out.print(f"   {len(found)} escrows approved: " + ", ".join(e["address"] for e in found))
    return list(found)


def _compliance(api: Api, run: str) -> dict[str, Any]:
    kyc = [api.call("POST", "compliance", "/kyc/cases", json={"user_id": a}) for a in ACCOUNTS]
    aml = api.call(
        "POST", "compliance", "/aml/screen",
        json={"user_id": "demo-alice", "transaction_id": f"demo-{run}", "amount": "250000.00",
              "currency": "USD", "type": "withdrawal", "counterparties": ["Demo Counterparty"],
              "occurred_at": datetime.now(UTC).isoformat()},
    )  # fmt: skip
    sanctions = api.call(
        "POST", "compliance", "/sanctions/screen",
        json={"names": ["Demo Alice"], "user_id": "demo-alice"},
    )  # fmt: skip
    chain = api.call("GET", "compliance", "/audit/verify")
    return {"kyc": kyc, "aml": aml, "sanctions": sanctions, "audit": chain}


def _report(
    out: Console,
    urls: dict[str, str],
    statuses: dict[str, str],
    emails: dict[str, str],
    mail: list[dict[str, Any]],
    escrows: list[dict[str, Any]],
    compliance: dict[str, Any],
) -> None:
    console = urls["console"]
    table = Table(title=f"after {CRASHED} -{DROP:.0%}")
    for col in ("account", "tier now", "emails received", "console"):
        table.add_column(col)
    for account, status in statuses.items():
        got = [m["subject"] for m in mail if emails[account] in m["to"]]
        table.add_row(account, status, "; ".join(got) or "-", f"{console}/accounts/{account}")
    out.print(table)
    out.print(f"escrows: {', '.join(e['address'] + ' ' + e['status'] for e in escrows)}")
    out.print(
        f"compliance: {len(compliance['kyc'])} KYC cases, AML screening level "
        f"{compliance['aml'].get('level')}, sanctions {compliance['sanctions'].get('status')}, "
        f"audit chain {'intact' if compliance['audit']['intact'] else 'BROKEN'} "
        f"({compliance['audit']['rows']} entries)"
    )
    out.print(f"open the console: {console}/ (mail: {console}/mail, escrows: {console}/escrows)")
