"""Every console page in headless Chromium against the running local system (after the
demo), with what it shows compared to the services' own APIs; roles and CSRF in the browser."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from fusion_prime.console.formatting import number, units
from fusion_prime.platform.bus.envelope import Envelope
from fusion_prime.platform.bus.postgres import OutgoingEvent, PostgresBroker
from fusion_prime.platform.embedded import EmbeddedPostgres
from tests.console.browser import browser
from tests.console.conftest import DemoRun, LocalSystem
from tests.harness import add_key, fetch

PAGES = {
    "/": "Overview",
    "/escrows": "Escrows",
    "/accounts": "Margin health",
    "/accounts/demo-alice": "Account demo-alice",
    "/prices": "Prices",
    "/prices/ETH-USD": "ETH-USD",
    "/compliance": "Compliance",
    "/bus": "Bus",
    "/mail": "Mail (development)",
}


def api(system: LocalSystem, service: str, path: str, **params: Any) -> Any:
    key = system.admin_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = system.urls["dev_local" if service == "mail" else service]
    r = httpx.get(f"{url}{path}", params=params, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def sign_in(page: Any, system: LocalSystem, key: str) -> None:
    page.goto(f"{system.console}/login")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{system.console}/")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture
def admin(chromium: Any, local_system: LocalSystem, demo: DemoRun) -> Iterator[Any]:
    assert demo.returncode == 0, demo.output
    key = local_system.admin_key
    assert key, "fusion-prime up wrote no admin key"
    context = chromium.new_context(timezone_id="Asia/Tokyo")
    page = context.new_page()
    sign_in(page, local_system, key)
    yield page
    context.close()


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.inner_text()).strip()


def test_every_page_renders_without_a_problem(admin: Any, local_system: LocalSystem) -> None:
    for path, title in PAGES.items():
        response = admin.goto(f"{local_system.console}{path}")
        assert response.status == 200, path
        assert admin.title() == f"{title} · Fusion Prime console", path
        assert admin.locator("[data-testid=problem]").count() == 0, (path, admin.content())
        assert _text(admin, "[data-testid=role]") == "admin"


def test_overview_shows_what_the_services_answer(admin: Any, local_system: LocalSystem) -> None:
    admin.goto(f"{local_system.console}/")
    assert admin.get_attribute("[data-testid=all-ready]", "data-ready") == "yes"
    for service in ("settlement", "compliance", "risk", "alerts", "oracle"):
        assert admin.get_attribute(f"[data-testid=service-{service}]", "data-ready") == "yes"
        database = api(local_system, service, "/health/ready")["database"]["database"]
        assert database in _text(admin, f"[data-testid=service-{service}]")
    stats = api(local_system, "risk", "/stats")
    for tier, count in stats["tiers"].items():
        assert _text(admin, f"[data-testid=tier-{tier}]") == str(count)
    assert _text(admin, "[data-testid=accounts-total]") == str(stats["accounts"])
    open_cases = api(local_system, "compliance", "/cases", status="open", limit=500)["items"]
    assert _text(admin, "[data-testid=cases-open]") == str(len(open_cases))
    # times are shown in the viewer's zone (this browser: Asia/Tokyo)
    assert "Asia/Tokyo" in _text(admin, "#tz")


def test_account_page_matches_risk_oracle_and_alerts(admin: Any, local_system: LocalSystem) -> None:
    admin.goto(f"{local_system.console}/accounts/demo-alice")
    health = api(local_system, "risk", "/accounts/demo-alice/health")
    assert _text(admin, "[data-testid=status]") == health["status"] == "liquidation"
    assert admin.get_attribute("[data-testid=factor]", "data-value") == health["factor"]
    account = api(local_system, "risk", "/accounts/demo-alice")
    for p in account["positions"]:
        row = f"[data-testid=positions] tr[data-asset={p['asset']}]"
        assert _text(admin, f"{row} [data-testid=collateral]") == units(
            p["collateral"], p["decimals"]
        )
        assert _text(admin, f"{row} [data-testid=debt]") == units(p["debt"], p["decimals"])
        price = api(local_system, "oracle", f"/prices/{p['asset']}-USD")
        assert _text(admin, f"{row} [data-testid=price]") == number(price["price"], 2)
    assert (
        _text(admin, "[data-testid=positions] tr[data-asset=ETH] [data-testid=collateral]") == "10"
    )
    admin.wait_for_selector("[data-testid=factor-chart][data-rendered=yes]")
    notes = api(local_system, "alerts", "/notifications", account="demo-alice")["items"]
    shown = admin.locator("[data-testid=notification]")
    assert shown.count() == len(notes) >= 1
    assert sorted(
        shown.evaluate_all("els => els.map(e => [e.dataset.kind, e.dataset.status])")
    ) == sorted([n["kind"], n["status"]] for n in notes)
    # the liquidation alert the demo waited for, with its delivery attempt (other kinds,
    # such as a price_unavailable before risk had every price, may be listed beside it)
    assert "attempt 1 over email" in _text(
        admin, "[data-testid=notification][data-kind=liquidation]"
    )
    events = api(local_system, "risk", "/accounts/demo-alice/events")["events"]
    assert admin.locator("[data-testid=events] [data-testid=to-tier]").count() == len(events)


def test_escrow_pages_match_settlement(admin: Any, local_system: LocalSystem) -> None:
    listed = api(local_system, "settlement", "/escrows")["items"]
    assert listed
    admin.goto(f"{local_system.console}/escrows")
    rows = admin.locator("[data-testid=escrows] tr[data-address]")
    assert sorted(rows.evaluate_all("els => els.map(e => e.dataset.address)")) == sorted(
        e["address"] for e in listed
    )
    one = listed[0]
    row = f"tr[data-address='{one['address']}']"
    assert _text(admin, f"{row} [data-testid=state]") == one["status"]
    assert _text(admin, f"{row} [data-testid=amount]").startswith(
        units(one["amount"], one["asset_decimals"])
    )
    # search by party (the payer) finds it; the escrow's own address opens its page
    admin.goto(f"{local_system.console}/escrows?q={one['payer']}")
    assert admin.locator(row).count() == 1
    admin.goto(f"{local_system.console}/escrows?q={one['address']}")
    assert admin.url == f"{local_system.console}/escrows/{one['address']}"
    history = api(local_system, "settlement", f"/escrows/{one['address']}/history")["items"]
    assert admin.locator("[data-testid=history] li").count() == len(history) >= 2


def test_prices_and_compliance_match_the_services(admin: Any, local_system: LocalSystem) -> None:
    admin.goto(f"{local_system.console}/prices")
    feeds = api(local_system, "oracle", "/feeds")["feeds"]
    for feed in feeds:
        latest = api(local_system, "oracle", f"/prices/{feed['pair']}")
        row = f"[data-testid=feeds] tr[data-pair='{feed['pair']}']"
        assert _text(admin, f"{row} [data-testid=price]") == number(latest["price"], 2)
        assert _text(admin, f"{row} [data-testid=status]").startswith(latest["status"])
    admin.goto(f"{local_system.console}/prices/ETH-USD")
    admin.wait_for_selector("[data-testid=price-chart][data-rendered=yes]")
    assert _text(admin, "[data-testid=price]") == number(
        api(local_system, "oracle", "/prices/ETH-USD")["price"], 2
    )
    admin.goto(f"{local_system.console}/compliance")
    chain = api(local_system, "compliance", "/audit/verify")
    assert admin.get_attribute("[data-testid=audit-chain]", "data-intact") == "yes"
    assert chain["intact"] is True
    kyc = api(local_system, "compliance", "/kyc/cases", limit=100)["items"]
    assert admin.locator("[data-testid=kyc] tr").count() == len(kyc) + 1
    # the decision's actor is the demo's key (identity from auth), as compliance says
    assert kyc[0]["last_actor"].startswith("local admin [")
    assert _text(admin, "[data-testid=kyc] [data-testid=actor]").startswith(kyc[0]["last_actor"])


def test_mail_page_shows_the_development_inbox(admin: Any, local_system: LocalSystem) -> None:
    admin.goto(f"{local_system.console}/mail")
    inbox = api(local_system, "mail", "/mail/messages", limit=100)["items"]
    subjects = admin.locator("[data-testid=mail] [data-testid=subject]")
    assert subjects.all_inner_texts() == [m["subject"] for m in inbox]
    assert any("LIQUIDATION" in s for s in subjects.all_inner_texts())


async def _dead_letter(system: LocalSystem) -> int:
    """A message on the signer's queue (consumed outside this system), dead-lettered."""
    env = Envelope(type="settlement.command_submitted", source="tests", subject="t-1", data={})
    async with PostgresBroker(EmbeddedPostgres(system.data_dir).url("fp_bus"), pool_size=1) as b:
        await b.publish(
            [OutgoingEvent(env.id, "settlement.commands.v1", env.subject, env.type, env.to_json())]
        )
        token = uuid.uuid4()
        leased = [
            m for m in await b.lease("settlement-signer", 100, 30, token) if m.event_id == env.id
        ]
        dead = await b.dead_letter("settlement-signer", leased[0].id, token, "signer: test refusal")
    assert dead is not None
    return dead


def _viewer_key(system: LocalSystem) -> str:
    """A viewer key in settlement's database: the service the console asks /auth/whoami."""
    key: str = _run(add_key(system.db("settlement"), "viewer", name="console viewer test"))
    return key


def _run(coro: Any) -> Any:
    """A coroutine in a thread of its own: Playwright's sync API keeps an event loop
    running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(60)


def _replayed_at(system: LocalSystem, dead_id: int) -> Any:
    bus_db = EmbeddedPostgres(system.data_dir).url("fp_bus")
    rows = _run(fetch(bus_db, "SELECT replayed_at FROM bus_dead_letters WHERE id = $1", dead_id))
    return rows[0]["replayed_at"]


def test_viewer_sees_no_replay_and_is_refused_operator_replays(
    chromium: Any, local_system: LocalSystem, demo: DemoRun
) -> None:
    # sync (Playwright's sync API): the database reads run in their own event loop
    dead_id = _run(_dead_letter(local_system))
    viewer = chromium.new_context()
    page = viewer.new_page()
    sign_in(page, local_system, _viewer_key(local_system))
    page.goto(f"{local_system.console}/bus")
    row = f"tr[data-dead-letter='{dead_id}']"
    assert page.locator(row).count() == 1
    assert page.locator(f"{row} [data-testid=replay]").count() == 0
    assert _text(page, "[data-testid=role]") == "viewer"
    # the post itself (with a valid CSRF token, as a viewer's browser could send it)
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    r = page.request.post(
        f"{local_system.console}/bus/replay",
        form={"service": "settlement", "dead_letter_id": str(dead_id), "csrf_token": token},
    )
    assert r.status == 403
    assert "may not replay" in r.text()
    viewer.close()
    assert _replayed_at(local_system, dead_id) is None

    admin = chromium.new_context()
    page = admin.new_page()
    sign_in(page, local_system, local_system.admin_key or "")
    page.goto(f"{local_system.console}/bus")
    # without the CSRF token the console refuses, and nothing is replayed
    r = page.request.post(
        f"{local_system.console}/bus/replay",
        form={"service": "settlement", "dead_letter_id": str(dead_id)},
    )
    assert r.status == 403
    assert "CSRF" in r.text()
    assert _replayed_at(local_system, dead_id) is None
    page.click(f"{row} [data-testid=replay]")
    page.wait_for_selector("[data-testid=message]")
    assert f"dead letter {dead_id} queued again" in _text(page, "[data-testid=message]")
    admin.close()
    assert _replayed_at(local_system, dead_id) is not None
