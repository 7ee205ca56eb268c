"""The processes of `fusion-prime up` that are not services: dev-local and the console.

dev-local (ops/devlocal.py) stands in for the outside world in development (an SMTP
server, a local price source); the console reads every service over HTTP and gets no
DATABASE_URL. Both are started, watched and stopped by the launcher with the services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from fusion_prime.ops.forked import ChildProcess, spawn
from fusion_prime.platform.embedded import free_port, port_free

CONSOLE_PORT = 8100
DEV_SMTP_PORT = 8025
DEV_HTTP_PORT = 8106
# the oracle polls the local price source of dev-local (no internet), and often
LOCAL_PRICE_INTERVAL = "5"


def _port(preferred: int) -> int:
    return preferred if port_free(preferred) else free_port()


@dataclass
class Helper:
    name: str
    port: int
    process: ChildProcess
    log_path: Path
    note: str

    def wait(self, path: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return f"exited ({self.process.returncode})"
                try:
                    if client.get(f"http://127.0.0.1:{self.port}{path}").status_code == 200:
                        return "ready"
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        return "timeout"


def _spawn(
    name: str, args: list[str], env: dict[str, str], logs: Path
) -> tuple[ChildProcess, Path]:
    log_path = logs / f"{name}.log"
    proc = spawn(args, {k: v for k, v in env.items() if k != "DATABASE_URL"}, log_path)
    return proc, log_path


@dataclass
class LocalExtras:
    """Ports chosen before the services start (alerts links to the console's)."""

    host: str
    console_port: int
    smtp_port: int
    dev_port: int
    helpers: list[Helper]

    @classmethod
    def choose(cls, host: str) -> LocalExtras:
        return cls(host, _port(CONSOLE_PORT), _port(DEV_SMTP_PORT), _port(DEV_HTTP_PORT), [])

    @property
    def dev_url(self) -> str:
        return f"http://127.0.0.1:{self.dev_port}"

    @property
    def console_url(self) -> str:
        return f"http://{self.host}:{self.console_port}"

    def service_env(self, service: str) -> dict[str, str]:
        """What a service gets wired to dev-local (variables in the environment win)."""
        if service == "alerts":
            return {
                "ALERTS_SMTP_HOST": "127.0.0.1",
                "ALERTS_SMTP_PORT": str(self.smtp_port),
                "ALERTS_SMTP_STARTTLS": "false",
                "ALERTS_ACCOUNT_URL": f"{self.console_url}/accounts/{{account_id}}",
            }
        if service == "oracle":
            return {
                **{f"ORACLE_{s}_URL": self.dev_url for s in ("COINBASE", "KRAKEN", "BINANCE")},
                "ORACLE_COINGECKO_URL": self.dev_url,
                "PRICE_UPDATE_INTERVAL": LOCAL_PRICE_INTERVAL,
            }
        return {}

    def start_dev_local(self, data_dir: Path, logs: Path) -> None:
        args = ["dev-local", "--data-dir", str(data_dir / "dev"), "--smtp-port",
                str(self.smtp_port), "--http-port", str(self.dev_port)]  # fmt: skip
        proc, log = _spawn("dev-local", args, dict(os.environ), logs)
        note = f"smtp 127.0.0.1:{self.smtp_port}, inbox, local price source"
        self.helpers.append(Helper("dev-local", self.dev_port, proc, log, note))

    def start_console(
        self, service_urls: dict[str, str], session_key: str, api_key: str | None, logs: Path
    ) -> None:
        env = {
            "CONSOLE_SESSION_KEY": session_key,
            # plain http on 127.0.0.1: a Secure cookie would never be sent back
            "CONSOLE_COOKIE_SECURE": "false",
            "CONSOLE_MAIL_URL": self.dev_url,
            **({"CONSOLE_API_KEY": api_key} if api_key else {}),
            **{f"CONSOLE_{name.upper()}_URL": url for name, url in service_urls.items()},
            **os.environ,
        }
        args = ["serve", "console", "--host", self.host, "--port", str(self.console_port)]
        proc, log = _spawn("console", args, env, logs)
        self.helpers.append(Helper("console", self.console_port, proc, log, "no database"))

    def wait_ready(self, timeout: float) -> dict[str, str]:
        paths = {"dev-local": "/health/live", "console": "/health/ready"}
        return {h.name: h.wait(paths[h.name], timeout) for h in self.helpers}

    def record(self, data_dir: Path, service_urls: dict[str, str]) -> None:
        """<data dir>/local-urls.json: where this run's processes listen (`fusion-prime demo`)."""
        urls = {**service_urls, "console": self.console_url, "dev_local": self.dev_url,
                "smtp": f"127.0.0.1:{self.smtp_port}"}  # fmt: skip
        (data_dir / "local-urls.json").write_text(json.dumps(urls, indent=1))

    def exited(self) -> list[Helper]:
        return [h for h in self.helpers if h.process.poll() is not None]

    def stop(self) -> None:
        for h in self.helpers:
            if h.process.poll() is None:
                h.process.send_signal(signal.SIGTERM)
        for h in self.helpers:
            try:
                h.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                h.process.kill()
                h.process.wait()
