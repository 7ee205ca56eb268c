"""Local development stand-ins for the outside world, started by `fusion-prime up`.

One process, two doors, for development only (it refuses FP_ENV=production):
- an SMTP server (aiosmtpd) that keeps every message it receives in a Maildir under the
  data directory, so the alerts service really sends its emails somewhere readable; its
  inbox is served over HTTP (`GET /mail/messages`) for the console;
- a local price source that answers the public ticker APIs the oracle polls (Coinbase
  Exchange, Kraken, Binance, CoinGecko shapes) from a table of prices set with
  `PUT /prices/{symbol}` (kept in <data dir>/dev-prices.json), so prices move without
  the internet: `fusion-prime demo` uses it.

It has no database. It listens on 127.0.0.1 by default and has no authentication: it is
reachable only from this machine and holds nothing but test mail and made-up prices.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import json
import mailbox
import os
import re
import threading
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fusion_prime.platform.auth import public_route
from fusion_prime.platform.errors import InvalidError, NotFoundError, install_error_handlers

DEV_ONLY = "development stand-in on 127.0.0.1 (refused in production)"

SYMBOL_RE = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,79}$"
Symbol = Annotated[str, Query(pattern=SYMBOL_RE)]
MAX_MESSAGES = 500


class PriceBook:
    """Prices by source symbol, stored as a JSON file (written whole, then renamed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.prices: dict[str, dict[str, str]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )

    def set(self, symbol: str, value: Decimal) -> dict[str, str]:
        entry = {"price": format(value, "f"), "at": datetime.now(UTC).isoformat()}
        with self._lock:
            self.prices[symbol] = entry
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.prices, indent=1, sort_keys=True))
            tmp.replace(self.path)
        return entry

    def get(self, symbol: str) -> dict[str, str] | None:
        return self.prices.get(symbol)


class Inbox:
    """The Maildir the SMTP handler writes and the HTTP side reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.box = mailbox.Maildir(str(path), create=True)
        self._lock = threading.Lock()

    def add(self, raw: bytes, envelope_from: str, envelope_to: list[str]) -> str:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        msg["X-Envelope-From"] = envelope_from
        msg["X-Envelope-To"] = ", ".join(envelope_to)
        with self._lock:
            return str(self.box.add(mailbox.MaildirMessage(msg)))

    def messages(self, to: str | None, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            keys = list(self.box.keys())
            found = [(k, self.box.get_bytes(k)) for k in keys]
        out = []
        for key, raw in found:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            recipients = str(msg.get("X-Envelope-To", ""))
            if to is not None and to.lower() not in recipients.lower():
                continue
            text = msg.get_body(preferencelist=("plain",))
            date = msg.get("Date")
            at = email.utils.parsedate_to_datetime(str(date)) if date else None
            out.append(
                {
                    "id": key,
                    "from": str(msg.get("From", "")),
                    "to": recipients,
                    "subject": str(msg.get("Subject", "")),
                    "date": at.astimezone(UTC).isoformat() if at else None,
                    "text": text.get_content() if text is not None else "",
                }
            )
        out.sort(key=lambda m: (m["date"] or "", m["id"]), reverse=True)
        return out[:limit]


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    price: str = Field(min_length=1, max_length=60, description="decimal string, > 0")


def _decimal(raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InvalidError("price must be a decimal string", field="price") from None
    if not value.is_finite() or value <= 0:
        raise InvalidError("price must be a positive finite number", field="price")
    return value


def create_app(prices: PriceBook, inbox: Inbox) -> FastAPI:
    app = FastAPI(title="Fusion Prime local development stand-ins")
    install_error_handlers(app)
    router = APIRouter()
    # stand-ins for the public price APIs and the development mail inbox: open like the
    # APIs they imitate, on 127.0.0.1 only, never in production (see main)

    def _known(symbol: str) -> dict[str, str]:
        entry = prices.get(symbol)
        if entry is None:
            raise NotFoundError(f"no local price for {symbol}: PUT /prices/{symbol} first")
        return entry

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/prices", dependencies=public_route(DEV_ONLY))
    async def list_prices() -> dict[str, Any]:
        return {"prices": prices.prices}

    @router.put("/prices/{symbol}", dependencies=public_route(DEV_ONLY))
    async def put_price(symbol: str, body: PriceIn) -> dict[str, Any]:
        if not re.fullmatch(SYMBOL_RE, symbol):
            raise InvalidError("symbol has characters a source symbol never has", field="symbol")
        return {"symbol": symbol, **prices.set(symbol, _decimal(body.price))}

    # the four public ticker APIs, as the oracle's adapters read them
    @router.get("/products/{symbol}/ticker", dependencies=public_route(DEV_ONLY))
    async def coinbase(symbol: str) -> JSONResponse:
        entry = prices.get(symbol)
        if entry is None:
            return JSONResponse({"message": "NotFound"}, status_code=404)
        p = entry["price"]
        # a standing price: quoted as of now, like a market that trades at it
        now = datetime.now(UTC).isoformat()
        return JSONResponse({"price": p, "bid": p, "ask": p, "time": now})

    @router.get("/0/public/Ticker", dependencies=public_route(DEV_ONLY))
    async def kraken(pair: Symbol) -> dict[str, Any]:
        entry = prices.get(pair)
        if entry is None:
            return {"error": [f"EQuery:Unknown asset pair {pair}"], "result": {}}
        return {"error": [], "result": {pair: {"c": [entry["price"], "1.0"]}}}

    @router.get("/api/v3/ticker/price", dependencies=public_route(DEV_ONLY))
    async def binance(symbol: Symbol) -> JSONResponse:
        entry = prices.get(symbol)
        if entry is None:
            return JSONResponse({"code": -1121, "msg": "Invalid symbol."}, status_code=400)
        return JSONResponse({"symbol": symbol, "price": entry["price"]})

    @router.get("/api/v3/simple/price", dependencies=public_route(DEV_ONLY))
    async def coingecko(ids: Symbol, vs_currencies: str = "usd") -> dict[str, Any]:
        entry = prices.get(ids)
        if entry is None or vs_currencies != "usd":
            return {}
        now = int(datetime.now(UTC).timestamp())
        return {ids: {"usd": entry["price"], "last_updated_at": now}}

    @router.get("/mail/messages", dependencies=public_route(DEV_ONLY))
    async def mail(
        to: Annotated[str | None, Query(max_length=320)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_MESSAGES)] = 100,
    ) -> dict[str, Any]:
        """What the SMTP server received, newest first (`to`: recipient contains)."""
        return {"items": await asyncio.to_thread(inbox.messages, to, limit)}

    app.include_router(router)
    return app


class _SmtpHandler:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        await asyncio.to_thread(
            self.inbox.add, bytes(raw), str(envelope.mail_from), list(envelope.rcpt_tos)
        )
        return "250 Message accepted for delivery"


def run(data_dir: Path, *, host: str, smtp_port: int, http_port: int) -> None:
    """Serve both doors until SIGTERM/SIGINT."""
    import uvicorn
    from aiosmtpd.controller import Controller

    if os.environ.get("FP_ENV") == "production":
        raise SystemExit("fusion-prime dev-local: refusing to start with FP_ENV=production")
    data_dir.mkdir(parents=True, exist_ok=True)
    inbox = Inbox(data_dir / "mail")
    prices = PriceBook(data_dir / "dev-prices.json")
    smtp = Controller(_SmtpHandler(inbox), hostname=host, port=smtp_port)
    smtp.start()
    try:
        uvicorn.run(
            create_app(prices, inbox),
            host=host,
            port=http_port,
            log_level="warning",
            access_log=False,
        )
    finally:
        smtp.stop()
