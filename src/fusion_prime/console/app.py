"""The console's pages. Every value comes from a service's HTTP API at request time."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fusion_prime.console import formatting
from fusion_prime.console.auth import CSRF_FIELD, Sessions, SignInError, User
from fusion_prime.console.clients import Answer, ServiceClients
from fusion_prime.console.settings import SERVICES, ConsoleSettings
from fusion_prime.platform.auth import public_route

HERE = Path(__file__).parent
ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
PAIR_RE = re.compile(r"^[A-Z0-9]{1,16}-[A-Z0-9]{1,16}$")
NOTIFICATION_STATUSES = ("pending", "sent", "delivered", "failed", "suppressed", "no_recipient")
TIERS = ("healthy", "warning", "margin_call", "liquidation", "unknown_price")
# notifications counted on the overview (at most this many pages of 500 per 24 h)
MAX_NOTIFICATION_PAGES = 4


def _plotly_js() -> Path:
    """plotly.min.js as the plotly package ships it (installed from the lock file)."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


class NotSignedIn(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


async def signed_in(request: Request) -> User:
    """The signed-in user, or NotSignedIn (answered by a redirect to the sign-in page)."""
    sessions: Sessions = request.app.state.sessions
    user = await sessions.current(request)
    if user is None:
        raise NotSignedIn(request.url.path)
    return user


CurrentUser = Annotated[User, Depends(signed_in)]


def create_app(
    settings: ConsoleSettings, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    clients = ServiceClients(settings, transport)
    sessions = Sessions(settings, clients)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await clients.close()

    app = FastAPI(title="Fusion Prime console", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.clients = clients
    app.state.sessions = sessions
    templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html
    env = templates.env
    env.filters["units"] = formatting.units
    env.filters["number"] = formatting.number
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    async def render(
        request: Request, name: str, user: User | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        response = HTMLResponse("")
        token = sessions.csrf_token(sessions.binding(request, response))
        page = templates.TemplateResponse(
            request,
            name,
            {
                "user": user,
                "csrf_field": CSRF_FIELD,
                "csrf_token": token,
                "refresh": settings.refresh_seconds,
                "mail_enabled": bool(settings.mail_url),
                "cookie_secure": settings.cookie_secure,
                **ctx,
            },
            status_code=status,
        )
        for key, value in response.headers.items():
            if key.lower() == "set-cookie":
                page.headers.append(key, value)
        page.headers["Cache-Control"] = "no-store"
        page.headers["X-Frame-Options"] = "DENY"
        page.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
        )
        return page

    @app.exception_handler(NotSignedIn)
    async def _to_sign_in(request: Request, exc: NotSignedIn) -> Response:
        return RedirectResponse(f"/login?next={exc.path}", status_code=303)

    # -- plumbing ---------------------------------------------------------------------
    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> dict[str, Any]:
        """The console has no database: ready once it serves (the pages say what is down)."""
        return {"status": "ok", "service": "console", "database": None}

    @app.get("/vendor/plotly.min.js", dependencies=public_route("the chart library"))
    async def plotly_js() -> FileResponse:
        return FileResponse(_plotly_js(), media_type="text/javascript")

    # -- sign-in ------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse, dependencies=public_route("the sign-in page"))
    async def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return await render(request, "login.html", None, next=_safe_next(next), error=None)

    @app.post(
        "/login", response_class=HTMLResponse, dependencies=public_route("sign-in (CSRF checked)")
    )
    async def login(
        request: Request,
        api_key: Annotated[str, Form(max_length=500)],
        csrf_token: Annotated[str | None, Form()] = None,
        next: Annotated[str, Form(max_length=500)] = "/",
    ) -> Response:
        if not sessions.csrf_ok(request, csrf_token):
            return await render(
                request, "login.html", None, 403, next=_safe_next(next),
                error="the form expired or did not come from this console: try again",
            )  # fmt: skip
        try:
            await sessions.verify(api_key.strip())
        except SignInError as exc:
            return await render(
                request, "login.html", None, 401, next=_safe_next(next), error=str(exc)
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        sessions.sign_in(response, api_key.strip())
        return response

    @app.post("/logout", dependencies=public_route("sign-out (CSRF checked)"))
    async def logout(
        request: Request, csrf_token: Annotated[str | None, Form()] = None
    ) -> Response:
        if not sessions.csrf_ok(request, csrf_token):
            return JSONResponse({"detail": "CSRF token missing or wrong"}, status_code=403)
        sessions.forget(request.cookies.get("fp_console_session"))
        response = RedirectResponse("/login", status_code=303)
        sessions.sign_out(response)
        return response

    async def risk_stats() -> tuple[Answer, datetime]:
        return await clients.aggregate("risk-stats", lambda: clients.get("risk", "/stats"))

    # -- overview -----------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request, user: CurrentUser) -> Response:
        (
            health,
            buses,
            (stats, stats_at),
            open_cases,
            assigned,
            (notes, notes_at),
        ) = await asyncio.gather(
            asyncio.gather(*(clients.get(s, "/health/ready") for s in SERVICES)),
            asyncio.gather(*(clients.get(s, "/bus/subscriptions") for s in SERVICES)),
            risk_stats(),
            clients.get("compliance", "/cases", status="open", limit=500),
            clients.get("compliance", "/cases", status="assigned", limit=500),
            clients.aggregate("notifications-24h", lambda: _notification_counts(clients)),
        )
        services = [_service_row(s, a) for s, a in zip(SERVICES, health, strict=True)]
        bus_rows = [row for a in buses if a.ok for row in a.data["items"]]
        return await render(
            request,
            "overview.html",
            user,
            services=services,
            all_ready=all(s["ready"] for s in services),
            bus={
                "depth": sum(r["depth"] for r in bus_rows),
                "dead_letters": sum(r["dead_letters"] for r in bus_rows),
                "subscriptions": len(bus_rows),
                "errors": [a.error for a in buses if not a.ok and not a.missing],
            },
            stats=stats,
            stats_at=stats_at.isoformat(),
            tiers=TIERS,
            open_cases=open_cases,
            assigned_cases=assigned,
            notifications=notes,
            notifications_at=notes_at.isoformat(),
            statuses=NOTIFICATION_STATUSES,
        )

    # -- escrows --------------------------------------------------------------------------
    @app.get("/escrows", response_class=HTMLResponse)
    async def escrows(
        request: Request, user: CurrentUser, q: str = "", status: str = "", cursor: str = ""
    ) -> Response:
        q = q.strip()
        status_f = status if status in ("created", "approved", "released", "refunded") else None
        if q and ADDRESS_RE.match(q):
            # an escrow's own address opens it; otherwise the address is a party
            one = await clients.get("settlement", f"/escrows/{q.lower()}")
            if one.ok:
                return RedirectResponse(f"/escrows/{q.lower()}", status_code=303)
            as_payer, as_payee = await asyncio.gather(
                clients.get("settlement", "/escrows", payer=q, status=status_f, limit=100),
                clients.get("settlement", "/escrows", payee=q, status=status_f, limit=100),
            )
            answers = [as_payer, as_payee]
            seen: dict[str, Any] = {}
            for a in answers:
                for item in a.data["items"] if a.ok else []:
                    seen[item["address"]] = item
            items = list(seen.values())
            error = next((a.error for a in answers if not a.ok), None)
            next_cursor = None
        elif q:
            items, error, next_cursor = (
                [],
                "search by an escrow or party address (0x + 40 hex)",
                None,
            )
        else:
            page = await clients.get(
                "settlement", "/escrows", status=status_f, cursor=cursor or None, limit=50
            )
            items = page.data["items"] if page.ok else []
            error = page.error
            next_cursor = page.data.get("next_cursor") if page.ok else None
        return await render(
            request, "escrows.html", user, items=items, error=error, q=q,
            state=status_f or "", next_cursor=next_cursor,
        )  # fmt: skip

    @app.get("/escrows/{address}", response_class=HTMLResponse)
    async def escrow(request: Request, user: CurrentUser, address: str) -> Response:
        if not ADDRESS_RE.match(address):
            return await render(request, "error.html", user, 404, message="not an escrow address")
        a = address.lower()
        one, history, anomalies = await asyncio.gather(
            clients.get("settlement", f"/escrows/{a}"),
            clients.get("settlement", f"/escrows/{a}/history"),
            clients.get("settlement", f"/escrows/{a}/anomalies"),
        )
        return await render(
            request, "escrow.html", user, address=a, escrow=one, history=history,
            anomalies=anomalies, status=200 if one.ok else (one.status or 502),
        )  # fmt: skip

    # -- margin health ----------------------------------------------------------------
    @app.get("/accounts", response_class=HTMLResponse)
    async def accounts(
        request: Request, user: CurrentUser, q: str = "", tier: str = ""
    ) -> Response:
        q = q.strip()
        if q and ACCOUNT_RE.match(q):
            return RedirectResponse(f"/accounts/{q}", status_code=303)
        tier_f = tier if tier in TIERS else None
        events, (stats, stats_at) = await asyncio.gather(
            clients.get("risk", "/margin-events", tier=tier_f, limit=100), risk_stats()
        )
        return await render(
            request, "accounts.html", user, events=events, stats=stats, tiers=TIERS,
            stats_at=stats_at.isoformat(),
            tier=tier_f or "", q=q,
            error="not an account id" if q else None,
        )  # fmt: skip

    @app.get("/accounts/{account_id}", response_class=HTMLResponse)
    async def account(request: Request, user: CurrentUser, account_id: str) -> Response:
        if not ACCOUNT_RE.match(account_id):
            return await render(request, "error.html", user, 404, message="not an account id")
        acct, health, snaps, events, notes = await asyncio.gather(
            clients.get("risk", f"/accounts/{account_id}"),
            clients.get("risk", f"/accounts/{account_id}/health"),
            clients.get("risk", f"/accounts/{account_id}/snapshots", limit=500),
            clients.get("risk", f"/accounts/{account_id}/events", limit=100),
            clients.get("alerts", "/notifications", account=account_id, limit=25),
        )
        positions = acct.data["positions"] if acct.ok else []
        prices = await asyncio.gather(
            *(clients.get("oracle", f"/prices/{p['asset']}-USD") for p in positions)
        )
        details = await asyncio.gather(
            *(
                clients.get("alerts", f"/notifications/{n['id']}")
                for n in (notes.data["items"] if notes.ok else [])
            )
        )
        snapshots = list(reversed(snaps.data["snapshots"])) if snaps.ok else []
        chart = {
            "x": [s["taken_at"] for s in snapshots],
            "y": [s["factor"] for s in snapshots],
            "status": [s["status"] for s in snapshots],
        }
        return await render(
            request, "account.html", user, account_id=account_id, account=acct,
            health=health, snapshots=snapshots, chart=chart, events=events,
            rows=list(zip(positions, prices, strict=True)),
            notifications=notes, details=[d.data for d in details if d.ok],
            status=200 if acct.ok else (acct.status or 502),
        )  # fmt: skip

    # -- prices -------------------------------------------------------------------------
    @app.get("/prices", response_class=HTMLResponse)
    async def prices(request: Request, user: CurrentUser) -> Response:
        feeds, sources = await asyncio.gather(
            clients.get("oracle", "/feeds"), clients.get("oracle", "/sources")
        )
        pairs = [f["pair"] for f in feeds.data["feeds"]] if feeds.ok else []
        latest = await asyncio.gather(*(clients.get("oracle", f"/prices/{p}") for p in pairs))
        rows = list(zip(feeds.data["feeds"] if feeds.ok else [], latest, strict=True))
        degraded = [
            (f, a) for f, a in rows if not a.ok or (a.data or {}).get("status") not in ("ok", None)
        ]
        return await render(
            request, "prices.html", user, feeds=feeds, rows=rows, degraded=degraded,
            sources=sources,
        )  # fmt: skip

    @app.get("/prices/{pair}", response_class=HTMLResponse)
    async def price(
        request: Request, user: CurrentUser, pair: str, interval: str = "1h"
    ) -> Response:
        if not PAIR_RE.match(pair):
            return await render(request, "error.html", user, 404, message="not a pair")
        interval = interval if interval in ("1m", "5m", "15m", "1h", "1d") else "1h"
        latest, history, feed = await asyncio.gather(
            clients.get("oracle", f"/prices/{pair}"),
            clients.get("oracle", f"/prices/{pair}/history", interval=interval),
            clients.get("oracle", f"/feeds/{pair}"),
        )
        buckets = history.data["buckets"] if history.ok else []
        chart = {
            "x": [b.get("start") or b.get("bucket") for b in buckets],
            "open": [b.get("open") for b in buckets],
            "high": [b.get("high") for b in buckets],
            "low": [b.get("low") for b in buckets],
            "close": [b.get("close") for b in buckets],
        }
        return await render(
            request, "price.html", user, pair=pair, latest=latest, history=history,
            buckets=buckets, chart=chart, feed=feed, interval=interval,
            status=200 if feed.ok else (feed.status or 502),
        )  # fmt: skip

    # -- compliance ---------------------------------------------------------------------
    @app.get("/compliance", response_class=HTMLResponse)
    async def compliance(request: Request, user: CurrentUser) -> Response:
        kyc, cases, hits, chain = await asyncio.gather(
            clients.get("compliance", "/kyc/cases", limit=100),
            clients.get("compliance", "/cases", limit=100),
            clients.get("compliance", "/sanctions/screenings", status="hit", limit=100),
            clients.get("compliance", "/audit/verify"),
        )
        head = chain.data["head_seq"] if chain.ok else 0
        audit = await clients.get("compliance", "/audit", after_seq=max(head - 50, 0), limit=50)
        entries = list(reversed(audit.data["items"])) if audit.ok else []
        return await render(
            request, "compliance.html", user, kyc=kyc, cases=cases, hits=hits,
            chain=chain, audit=audit, entries=entries,
        )  # fmt: skip

    # -- bus ------------------------------------------------------------------------------
    async def bus_page(request: Request, user: User, message: str | None, status: int) -> Response:
        subs, dead = await asyncio.gather(
            asyncio.gather(*(clients.get(s, "/bus/subscriptions") for s in SERVICES)),
            asyncio.gather(*(clients.get(s, "/bus/dead-letters", limit=100) for s in SERVICES)),
        )
        rows = [r | {"service": s} for s, a in zip(SERVICES, subs, strict=True) if a.ok
                for r in a.data["items"]]  # fmt: skip
        letters = [d | {"service": s} for s, a in zip(SERVICES, dead, strict=True) if a.ok
                   for d in a.data["items"]]  # fmt: skip
        errors = [f"{a.service}: {a.error}" for a in (*subs, *dead) if not a.ok and not a.missing]
        return await render(
            request, "bus.html", user, status, rows=rows, letters=letters, errors=errors,
            unavailable=not rows and all(a.missing for a in subs), message=message,
        )  # fmt: skip

    @app.get("/bus", response_class=HTMLResponse)
    async def bus(request: Request, user: CurrentUser) -> Response:
        return await bus_page(request, user, None, 200)

    @app.post("/bus/replay", response_class=HTMLResponse)
    async def replay(
        request: Request,
        user: CurrentUser,
        service: Annotated[str, Form(max_length=40)],
        dead_letter_id: Annotated[int, Form(ge=1)],
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        if not sessions.csrf_ok(request, csrf_token):
            return await bus_page(request, user, "refused: CSRF token missing or wrong", 403)
        if not user.may("replay"):
            return await bus_page(
                request, user, f"refused: role {user.role} may not replay dead letters", 403
            )
        if service not in SERVICES:
            return await bus_page(request, user, "refused: unknown service", 422)
        key = request.cookies.get("fp_console_session", "")
        answer = await clients.post_as(key, service, f"/bus/dead-letters/{dead_letter_id}/replay")
        if not answer.ok:
            return await bus_page(
                request, user, f"replay of {dead_letter_id} failed: {answer.error}",
                answer.status or 502,
            )  # fmt: skip
        return await bus_page(request, user, f"dead letter {dead_letter_id} queued again", 200)

    # -- local development mail ---------------------------------------------------------
    @app.get("/mail", response_class=HTMLResponse)
    async def mail(request: Request, user: CurrentUser, to: str = "") -> Response:
        if not settings.mail_url:
            return await render(
                request, "error.html", user, 404,
                message="no development mail server configured (CONSOLE_MAIL_URL)",
            )  # fmt: skip
        inbox = await clients.get("mail", "/mail/messages", to=to.strip() or None, limit=100)
        return await render(request, "mail.html", user, inbox=inbox, to=to)

    return app


def _safe_next(target: str) -> str:
    """Only paths of this console (no //host, no scheme): an open redirect otherwise."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _service_row(name: str, a: Answer) -> dict[str, Any]:
    data = a.data if a.ok else None
    db = (data or {}).get("database") or {}
    return {
        "name": name,
        "ready": a.ok and (data or {}).get("status") == "ok",
        "error": a.error,
        "database": db.get("database"),
        "revision": db.get("revision"),
        "embedded": db.get("embedded"),
        "server_version": db.get("server_version"),
    }


async def _notification_counts(clients: ServiceClients) -> dict[str, Any]:
    """Notifications created in the last 24 h by status (counted over a few pages)."""
    since = (datetime.now(UTC) - timedelta(hours=24)).isoformat()
    counts: Counter[str] = Counter()
    cursor = None
    complete = False
    error = None
    for _ in range(MAX_NOTIFICATION_PAGES):
        a = await clients.get("alerts", "/notifications", since=since, cursor=cursor, limit=500)
        if not a.ok:
            error = a.error
            break
        counts.update(n["status"] for n in a.data["items"])
        cursor = a.data.get("next_cursor")
        if cursor is None:
            complete = True
            break
    return {"counts": dict(counts), "complete": complete, "error": error}
