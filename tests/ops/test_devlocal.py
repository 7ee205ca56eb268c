"""dev-local (started by `fusion-prime up`): the oracle's real source adapters read its
local price source, and what its SMTP server receives is kept and listed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx

from fusion_prime.oracle.domain import SourceRef
from fusion_prime.oracle.sources import SourceSet, SourceUrls
from fusion_prime.platform.embedded import free_port
from tests.harness import REPO_ROOT


@contextlib.contextmanager
def dev_local(data_dir: Path, **env: str) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    http_port, smtp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.cli", "dev-local", "--data-dir", str(data_dir),
         "--http-port", str(http_port), "--smtp-port", str(smtp_port)],
        cwd=REPO_ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "FP_ENV"}, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield url, smtp_port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def test_oracle_adapters_read_the_local_prices_and_they_survive_a_restart(
    tmp_path: Path,
) -> None:
    with dev_local(tmp_path) as (url, _, _proc):
        for symbol, price in (("ETH-USD", "2500.5"), ("XETHZUSD", "2501"), ("ETHUSDT", "2499"),
                              ("ethereum", "2500")):  # fmt: skip
            r = httpx.put(f"{url}/prices/{symbol}", json={"price": price})
            assert r.status_code == 200, r.text
        assert httpx.put(f"{url}/prices/X", json={"price": "-1"}).status_code == 422
        sources = SourceSet.from_urls(SourceUrls(url, url, url, url, None), 5.0)
        try:
            seen = {
                kind: await sources.observe("ETH-USD", SourceRef(kind, symbol))
                for kind, symbol in (("coinbase", "ETH-USD"), ("kraken", "XETHZUSD"),
                                     ("binance", "ETHUSDT"), ("coingecko", "ethereum"))
            }  # fmt: skip
            unknown = await sources.observe("ETH-USD", SourceRef("binance", "NOPE"))
        finally:
            await sources.close()
        assert {k: (o.value, o.error) for k, o in seen.items()} == {
            "coinbase": (Decimal("2500.5"), None),
            "kraken": (Decimal("2501"), None),
            "binance": (Decimal("2499"), None),
            "coingecko": (Decimal("2500"), None),
        }
        assert unknown.value is None
        assert unknown.error
    with dev_local(tmp_path) as (url, _, _proc):
        assert httpx.get(f"{url}/prices").json()["prices"]["ETHUSDT"]["price"] == "2499"


async def test_smtp_server_keeps_what_it_receives(tmp_path: Path) -> None:
    with dev_local(tmp_path) as (url, smtp_port, _proc):
        msg = EmailMessage()
        msg["From"] = "alerts@fusion-prime.invalid"
        msg["To"] = "ops@example.test"
        msg["Subject"] = "MARGIN CALL for acct-1"
        msg.set_content("health factor 1.05")
        await aiosmtplib.send(msg, hostname="127.0.0.1", port=smtp_port, start_tls=False)
        items = httpx.get(f"{url}/mail/messages", params={"to": "ops@"}).json()["items"]
        assert [(m["subject"], m["to"]) for m in items] == [
            ("MARGIN CALL for acct-1", "ops@example.test")
        ]
        assert "health factor 1.05" in items[0]["text"]
        assert httpx.get(f"{url}/mail/messages", params={"to": "nobody"}).json()["items"] == []
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 1


def test_refuses_production(tmp_path: Path) -> None:
    with dev_local(tmp_path, FP_ENV="production") as (_, _, proc):
        assert proc.wait(timeout=30) != 0
        assert proc.stdout is not None
        assert b"refusing to start with FP_ENV=production" in proc.stdout.read()
