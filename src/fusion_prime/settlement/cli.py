"""`fusion-prime settlement ...`: operator views of what the tables hold.

Reads DATABASE_URL like the service (no fallback); never needs the webhook key.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from fusion_prime.platform.database import (
    DatabaseConfigError,
    engine_scope,
    normalise_database_url,
)
from fusion_prime.platform.settings import BaseServiceSettings

app = typer.Typer(no_args_is_help=True, help="Settlement administration.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

_SUMMARY = (
    ("escrows", "SELECT status, count(*) FROM escrows GROUP BY 1 ORDER BY 1"),
    (
        "parked events",
        "SELECT event_type, count(*) FROM chain_events c "
        "JOIN parked_events p ON p.chain_event_id = c.id GROUP BY 1 ORDER BY 1",
    ),
    (
        "anomalies",  # the current ones: a re-fold in chain order supersedes some
        "SELECT reason, count(*) FROM escrow_anomalies WHERE superseded_at IS NULL "
        "GROUP BY 1 ORDER BY 1",
    ),
    ("commands", "SELECT status, count(*) FROM commands GROUP BY 1 ORDER BY 1"),
    ("webhook deliveries", "SELECT status, count(*) FROM webhook_deliveries GROUP BY 1 ORDER BY 1"),
)


def _run(queries: list[tuple[str, str, dict[str, Any]]]) -> list[list[Any]]:
    settings = BaseServiceSettings()
    try:
        url = normalise_database_url(settings.database_url, service="settlement")
    except DatabaseConfigError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None

    async def _go() -> list[list[Any]]:
        results: list[list[Any]] = []
        async with engine_scope(url, pool_size=1, app_name="settlement-cli") as engine:
            async with engine.connect() as conn:
                for _, sql, params in queries:
                    results.append([tuple(r) for r in await conn.execute(text(sql), params)])
        return results

    return asyncio.run(_go())


@app.command()
def status() -> None:
    """Counts of escrows, parked events, anomalies, commands and webhook deliveries."""
    results = _run([(name, sql, {}) for name, sql in _SUMMARY])
    table = Table(title="settlement")
    for col in ("what", "kind", "count"):
        table.add_column(col)
    for (name, _), rows in zip(_SUMMARY, results, strict=True):
        if not rows:
            table.add_row(name, "-", "0")
        for kind, count in rows:
            table.add_row(name, str(kind), str(count))
    out.print(table)


@app.command()
def parked(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="rows to show")] = 50,
) -> None:
    """Events waiting for an escrow deployment that has not arrived, oldest first."""
    sql = (
        "SELECT c.escrow_address, c.event_type, c.chain_id, c.block_number, c.log_index, "
        "c.tx_hash, p.parked_at FROM parked_events p JOIN chain_events c "
        "ON c.id = p.chain_event_id ORDER BY p.parked_at LIMIT :n"
    )
    (rows,) = _run([("parked", sql, {"n": limit})])
    table = Table(title=f"parked events ({len(rows)} shown)")
    for col in ("escrow", "type", "chain", "block", "log", "tx", "parked at"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    out.print(table)


@app.command("reencrypt-webhook-secrets")
def reencrypt_webhook_secrets() -> None:
    """After rotating SETTLEMENT_WEBHOOK_KEY (old one in SETTLEMENT_WEBHOOK_PREVIOUS_KEYS):
    re-encrypt every stored webhook secret under the new key, in one transaction."""
    from pydantic import ValidationError

    from fusion_prime.settlement.settings import SettlementSettings
    from fusion_prime.settlement.webhooks import reencrypt_secrets, settings_cipher

    try:
        settings = SettlementSettings()
        url = normalise_database_url(settings.database_url, service="settlement")
    except (ValidationError, DatabaseConfigError) as exc:
        err.print(str(exc).splitlines()[0] if isinstance(exc, DatabaseConfigError) else exc)
        raise typer.Exit(2) from None

    async def _go() -> int:
        async with engine_scope(url, pool_size=1, app_name="settlement-cli") as engine:
            async with engine.begin() as conn:
                session = AsyncSession(bind=conn)
                return await reencrypt_secrets(session, settings_cipher(settings))

    count = asyncio.run(_go())
    out.print(f"re-encrypted {count} webhook secrets under the current key")


@app.command()
def relay() -> None:
    """Run the chain relayer alone (ETH_RPC_URL, SETTLEMENT_CHAIN_ID, ...; docs/settlement.md):
    escrow logs to settlement.events.v1 through the outbox, plus the outbox relay that moves
    them to the broker. `fusion-prime serve settlement` runs the same relayer when ETH_RPC_URL
    is set; running both for one chain is safe (one leads, the other waits)."""
    from fusion_prime.platform.app import _supervise
    from fusion_prime.platform.bus.wiring import BusWorkers, running
    from fusion_prime.platform.database import redact_url
    from fusion_prime.platform.observability import configure_logging
    from fusion_prime.platform.runner import StartupRefusedError, load_settings, preflight
    from fusion_prime.settlement.relayer import Relayer
    from fusion_prime.settlement.settings import RelayerSettings
    from fusion_prime.settlement.spec import SPEC

    try:
        settings, url = load_settings(SPEC, settings_cls=RelayerSettings)
    except StartupRefusedError as exc:
        err.print(f"fusion-prime settlement relay: {exc}")
        raise typer.Exit(exc.code) from None
    assert isinstance(settings, RelayerSettings)
    if not settings.relayer_enabled:
        err.print(
            "fusion-prime settlement relay: ETH_RPC_URL is not set (and SETTLEMENT_CHAIN_ID, "
            "SETTLEMENT_FACTORY_ADDRESS with it); nothing to relay"
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level)
    from fusion_prime.platform.runner import log as runner_log

    runner_log.info(f"Using database URL: {redact_url(url)}")

    async def _go() -> None:
        await preflight(SPEC, settings, url, migrate=False)
        async with engine_scope(url, pool_size=4, app_name="settlement-relayer") as engine:
            from sqlalchemy.ext.asyncio import async_sessionmaker

            workers = BusWorkers(
                "settlement",
                settings,
                engine,
                async_sessionmaker(engine, expire_on_commit=False),
                publishes=True,
                consumers=[],
            )
            async with running(workers):
                # restarted with back-off after a crash, exactly like inside the service
                await _supervise("settlement-relayer", Relayer.from_settings(engine, settings).run)

    try:
        asyncio.run(_go())
    except StartupRefusedError as exc:
        err.print(f"fusion-prime settlement relay: {exc}")
        raise typer.Exit(exc.code) from None
    except KeyboardInterrupt:
        pass


@app.command("demo-escrow")
def demo_escrow(
    amount_wei: Annotated[int, typer.Option(min=1, help="ether to lock, in wei")] = 10**16,
) -> None:
    """On the local chain of `fusion-prime up` (FP_DATA_DIR): create a 2-of-3 ether escrow
    and approve it by payer and payee, from anvil's unlocked dev accounts. Settlement's
    relayer publishes it after the confirmations: GET /escrows/{address} shows it."""
    import json

    from fusion_prime.ops.localchain import demo_escrow as run_demo
    from fusion_prime.ops.localchain import deployment_file
    from fusion_prime.platform.embedded import data_dir_from_env

    record = deployment_file(data_dir_from_env().resolve())
    if not record.exists():
        err.print(f"no local chain recorded in {record}: start `fusion-prime up` first")
        raise typer.Exit(2)
    chain = json.loads(record.read_text())
    try:
        result = run_demo(chain["url"], chain["factory"], amount_wei)
    except Exception as exc:
        err.print(f"demo escrow failed on {chain['url']}: {exc}")
        raise typer.Exit(1) from None
    out.print(json.dumps(result, indent=1))
    out.print(f"escrow {result['escrow']}: see GET /escrows/{result['escrow']} on settlement")
