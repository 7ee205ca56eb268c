"""Authentication overhead: the same route with and without the API key check, one run.

Two instances of the oracle app on one migrated database (real PostgreSQL): one as
shipped, one with the key check replaced by a fixed identity (FastAPI dependency
overrides), requests alternated between them so both see the same machine load. The
added latency is the difference of the percentiles; the cache-hit cost of
`Authenticator.identify` is measured alone too. Target: p99 overhead <= 1 ms.

Run: .venv/bin/python -m bench.auth [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
from rich.console import Console
from rich.table import Table

from fusion_prime.oracle.spec import SPEC
from fusion_prime.platform import auth
from fusion_prime.platform.app import create_app
from fusion_prime.platform.database import normalise_database_url
from tests.harness import DatabaseFactory, add_key, admin_url_from_env, auth_headers

# a route whose own work is nothing but the identity (no database query): the difference
# is the check itself, not the noise of a query on a loaded machine
ROUTE = "/auth/whoami"
ROUNDS = 5


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _bench(n: int) -> None:
    admin, _server = admin_url_from_env()
    factory = DatabaseFactory(admin)
    db = await factory.create("oracle", SPEC.migrations_dir)
    try:
        token = await add_key(db, "viewer", name="bench")
        settings = SPEC.settings_cls(
            DATABASE_URL=db,
            FP_ENV="test",
            FP_RATE_LIMIT_PER_SECOND="1e9",
            FP_RATE_LIMIT_BURST="1000000000",
        )
        url = normalise_database_url(db, service=SPEC.name)
        checked = create_app(SPEC, settings, url)
        unchecked = create_app(SPEC, settings, url)
        fixed = auth.Identity("000000000000", "bench", "viewer")

        async def anonymous() -> auth.Identity:
            return fixed

        unchecked.dependency_overrides[auth.authenticate] = anonymous
        unchecked.dependency_overrides[auth.RULES["viewer"]] = anonymous
        async with (
            checked.router.lifespan_context(checked),
            unchecked.router.lifespan_context(unchecked),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=checked),
                base_url="http://bench",
                headers=auth_headers(token),
            ) as with_key,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=unchecked), base_url="http://bench"
            ) as without,
        ):
            for client in (with_key, without):  # warm-up (first scrypt, pools, imports)
                for _ in range(50):
                    assert (await client.get(ROUTE)).status_code == 200
            timed: dict[str, list[float]] = {"with key": [], "without": []}
            rounds: list[tuple[float, float]] = []  # (p50, p99) differences per round
            for _ in range(ROUNDS):
                this: dict[str, list[float]] = {"with key": [], "without": []}
                for i in range(n // ROUNDS):
                    pair = [("with key", with_key), ("without", without)]
                    for name, client in pair if i % 2 else pair[::-1]:  # alternate the order
                        t0 = time.perf_counter()
                        r = await client.get(ROUTE)
                        this[name].append(time.perf_counter() - t0)
                        assert r.status_code == 200
                for name, values in this.items():
                    timed[name] += values
                rounds.append(
                    (
                        _pct(this["with key"], 0.5) - _pct(this["without"], 0.5),
                        _pct(this["with key"], 0.99) - _pct(this["without"], 0.99),
                    )
                )
            authenticator: auth.Authenticator = checked.state.authenticator
            identify = await _time(lambda: authenticator.identify(token), n)
    finally:
        await factory.drop(db)  # the embedded server is left running, as the suite leaves it
    table = Table(title=f"auth overhead on GET {ROUTE} (oracle, in-process, {n} requests each)")
    for col in ("measure", "p50 ms", "p99 ms", "mean ms"):
        table.add_column(col, justify="right")
    for name, values in timed.items():
        table.add_row(
            f"GET {ROUTE} {name}",
            f"{_pct(values, 0.5):.3f}",
            f"{_pct(values, 0.99):.3f}",
            f"{sum(values) / len(values) * 1000:.3f}",
        )
    added50 = _pct(timed["with key"], 0.5) - _pct(timed["without"], 0.5)
    added99 = _pct(timed["with key"], 0.99) - _pct(timed["without"], 0.99)
    table.add_row("added by authentication (all requests)", f"{added50:.3f}", f"{added99:.3f}", "")
    median99 = sorted(d99 for _, d99 in rounds)[len(rounds) // 2]
    median50 = sorted(d50 for d50, _ in rounds)[len(rounds) // 2]
    table.add_row(
        f"added, median of {ROUNDS} rounds (p99 range {min(d for _, d in rounds):.3f} .. "
        f"{max(d for _, d in rounds):.3f})",
        f"{median50:.3f}",
        f"{median99:.3f}",
        "",
    )
    table.add_row(
        "Authenticator.identify (cache hit) alone",
        f"{_pct(identify, 0.5):.4f}",
        f"{_pct(identify, 0.99):.4f}",
        f"{sum(identify) / len(identify) * 1000:.4f}",
    )
    console = Console(width=120)
    console.print(table)
    verdict = "met" if median99 <= 1.0 else "NOT met"
    console.print(
        f"target p99 overhead <= 1 ms: {verdict} (median of the rounds {median99:.3f} ms; "
        f"the check itself, a cache hit, {_pct(identify, 0.99):.4f} ms at p99)"
    )


async def _time(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    asyncio.run(_bench(args.requests))


if __name__ == "__main__":
    main()
