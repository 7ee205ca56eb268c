"""The console process: no database, ever; refusals before serving; cookies and CSRF."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import psutil

from fusion_prime.platform.embedded import EmbeddedPostgres, free_port
from tests.console.conftest import LocalSystem
from tests.harness import REPO_ROOT, fetch

KEY = "k" * 40


def _serve_console(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CONSOLE_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "-m", "fusion_prime.cli", "serve", "console", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_console_refuses_a_database_url() -> None:
    done = _serve_console(CONSOLE_SESSION_KEY=KEY, DATABASE_URL="postgresql://u@127.0.0.1/x")
    assert done.returncode == 2
    assert "refusing to start" in done.stderr
    assert "the console has no database" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout


def test_console_refuses_without_session_key_or_insecure_cookies_in_production() -> None:
    missing = _serve_console()
    assert missing.returncode == 2
    assert "CONSOLE_SESSION_KEY" in missing.stderr
    insecure = _serve_console(
        CONSOLE_SESSION_KEY=KEY, CONSOLE_COOKIE_SECURE="false", FP_ENV="production"
    )
    assert insecure.returncode == 2
    assert "CONSOLE_COOKIE_SECURE=false is refused" in insecure.stderr


def _console_process(system: LocalSystem) -> psutil.Process:
    port = int(system.console.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"no process listens on the console port {port}")


async def test_console_process_has_no_database_and_never_connects_to_one(
    local_system: LocalSystem,
) -> None:
    proc = _console_process(local_system)
    env = proc.environ()
    assert "DATABASE_URL" not in env
    assert "FP_BUS_URL" not in env
    assert not any(v.startswith(("postgres://", "postgresql")) for v in env.values())
    pages = ["/login", "/health/ready"]
    with httpx.Client(base_url=local_system.console, timeout=30) as client:
        for path in pages:
            assert client.get(path).status_code == 200
    pg_port = EmbeddedPostgres(local_system.data_dir).port
    remote = {c.raddr.port for c in proc.net_connections(kind="tcp") if c.raddr}
    assert pg_port not in remote
    # the database server knows nobody from the console's process
    clients = await fetch(
        EmbeddedPostgres(local_system.data_dir).url(),
        "SELECT application_name, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL",
    )
    # (a console socket to a service may share its ephemeral port number with a service's
    # connection to PostgreSQL: Linux reuses source ports across destinations)
    own_ports = {
        c.laddr.port
        for c in proc.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == pg_port
    }
    assert not [c for c in clients if c["client_port"] in own_ports]
    assert {c.laddr.port for c in proc.net_connections(kind="tcp")}  # the sockets were read
    assert not [c for c in clients if "console" in (c["application_name"] or "")]


def test_pages_need_sign_in_and_forms_need_the_csrf_token(local_system: LocalSystem) -> None:
    with httpx.Client(base_url=local_system.console, timeout=30) as client:
        for path in ("/", "/escrows", "/accounts/demo-alice", "/prices", "/compliance", "/bus"):
            r = client.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/login")
        form = client.get("/login")
        cookie = form.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        # `up` serves plain http on 127.0.0.1: Secure is off there, and the page says so
        assert "Secure" not in cookie
        assert "plain-http local development only" in form.text
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
        assert token
        refused = client.post("/login", data={"api_key": "fpk_x", "next": "/"})
        assert refused.status_code == 403
        assert "did not come from this console" in refused.text
        forged = client.post("/login", data={"api_key": "fpk_x", "csrf_token": "0" * 64})
        assert forged.status_code == 403
        # with the token the key itself is checked (by a service's /auth/whoami)
        wrong = client.post(
            "/login", data={"api_key": "fpk_000000000000_not-a-key-at-all", "csrf_token": token[1]}
        )
        assert wrong.status_code == 401
        replay = client.post("/bus/replay", data={"service": "risk", "dead_letter_id": "1"})
        assert replay.status_code == 303  # not signed in: to the sign-in page, nothing replayed
