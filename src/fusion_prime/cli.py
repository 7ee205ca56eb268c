"""The one `fusion-prime` command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from fusion_prime.ops.audit.cli import audit as audit_command
from fusion_prime.ops.deploy_cli import app as deploy_app
from fusion_prime.ops.verify_cli import verify as verify_command
from fusion_prime.platform.spec import ServiceSpec
from fusion_prime.services import load_spec, service_names

app = typer.Typer(no_args_is_help=True, help="Fusion Prime: run, migrate and check the services.")


def _spec_or_exit(service: str) -> ServiceSpec:
    try:
        return load_spec(service)
    except KeyError as exc:
        typer.echo(str(exc.args[0]), err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="service name")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="port (default: the service's own)")] = None,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="apply pending migrations first (local use)")
    ] = False,
) -> None:
    """Run one service against the DATABASE_URL it is given (`console`: the operator
    console, which has no database and reads the services over HTTP)."""
    if service == "console":
        from fusion_prime.console.server import run_console

        run_console(host=host, port=port)
        return
    from fusion_prime.platform.runner import run_service

    run_service(_spec_or_exit(service), host=host, port=port, migrate=migrate)


@app.command()
def migrate(service: Annotated[str, typer.Argument(help="service name")]) -> None:
    """Apply the service's Alembic migrations to DATABASE_URL (a separate deploy step)."""
    from fusion_prime.platform.migrations import upgrade_url
    from fusion_prime.platform.runner import StartupRefusedError, _fail, load_settings
    from fusion_prime.platform.settings import BaseServiceSettings

    spec = _spec_or_exit(service)
    try:
        _, url = load_settings(spec, settings_cls=BaseServiceSettings)
    except StartupRefusedError as exc:
        _fail(spec, str(exc), exc.code)
    asyncio.run(upgrade_url(url, spec.migrations_dir))
    typer.echo(f"{spec.name}: migrations at head")


@app.command()
def up(
    data_dir: Annotated[
        Path | None, typer.Option(help="data directory (default $FP_DATA_DIR or ./.fusion-prime)")
    ] = None,
    host: Annotated[str, typer.Option(help="interface the services bind")] = "127.0.0.1",
) -> None:
    """Start the embedded PostgreSQL and every service, until Ctrl-C."""
    from fusion_prime.ops.launcher import run_local_stack

    raise typer.Exit(run_local_stack(data_dir=data_dir, host=host))


@app.command("dev-local")
def dev_local(
    data_dir: Annotated[Path, typer.Option(help="where the mail and prices are kept")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    smtp_port: Annotated[int, typer.Option(help="SMTP port")] = 8025,
    http_port: Annotated[int, typer.Option(help="HTTP port (inbox, local price source)")] = 8106,
) -> None:
    """Development only (`fusion-prime up` starts it): an SMTP server keeping what it
    receives, and a local price source the oracle polls."""
    from fusion_prime.ops.devlocal import run

    run(data_dir, host=host, smtp_port=smtp_port, http_port=http_port)


@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="data directory of the running `fusion-prime up`")
    ] = None,
) -> None:
    """On the running local system: accounts, escrows, prices, a 30% crash, and what came of it."""
    from fusion_prime.ops.demo import run_demo

    raise typer.Exit(run_demo(data_dir))


@app.command("services")
def list_services() -> None:
    """List the services this build ships."""
    for name in service_names():
        spec = load_spec(name)
        typer.echo(f"{name}\t{spec.default_port}\t{spec.description}")


# Operator tools; their modules import their heavy dependencies only when run.
app.command("audit")(audit_command)
app.command("verify")(verify_command)
app.add_typer(deploy_app, name="deploy")


# Command groups that live beside the code they administer; added when shipped.
_GROUPS: dict[str, str] = {
    "events": "fusion_prime.platform.bus.cli",
    "auth": "fusion_prime.platform.auth_cli",
    "settlement": "fusion_prime.settlement.cli",
    "compliance": "fusion_prime.compliance.cli",
    "risk": "fusion_prime.risk.cli",
    "oracle": "fusion_prime.oracle.cli",
    "alerts": "fusion_prime.alerts.cli",
}


_mounted: set[str] = set()


def add_groups(names: set[str] | None = None) -> typer.Typer:
    """Mount the shipped command groups (all, or only `names`) and return the app.

    Importing a group imports its service, so `fusion-prime serve` (and a refusal to
    start) does not pay for the others: main() mounts only the group it was asked for.
    """
    import importlib
    import importlib.util

    for name, module in _GROUPS.items():
        if name in _mounted or (names is not None and name not in names):
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            app.add_typer(importlib.import_module(module).app, name=name)
            _mounted.add(name)
    return app


def _requested_groups(args: list[str]) -> set[str] | None:
    """The group named on the command line; None (all) when the command is not given."""
    first = next((a for a in args if not a.startswith("-")), None)
    return None if first is None else {first}


def main() -> None:
    add_groups(_requested_groups(sys.argv[1:]))
    app()


if __name__ == "__main__":
    main()
