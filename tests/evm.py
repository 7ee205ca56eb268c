"""A local EVM for tests: anvil and solc-js installed from npm by tools/evm/install.sh.

Shared by every test that needs a chain (the oracle's Chainlink adapter, the relayer).
Nothing is skipped: a missing npm or a failed install fails the test with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusion_prime.platform.embedded import free_port
from tests.harness import REPO_ROOT

EVM_DIR = REPO_ROOT / "tools" / "evm"
ANVIL = EVM_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
CACHE = REPO_ROOT / ".cache" / "evm"


def ensure_tools() -> None:
    """Install (once) the npm packages of tools/evm; fail loudly when that is impossible."""
    result = subprocess.run(
        ["bash", str(EVM_DIR / "install.sh")], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0 or not ANVIL.exists():
        pytest.fail(f"cannot install the EVM test tools (tools/evm): {result.stderr[-2000:]}")


def compile_solidity(path: Path) -> dict[str, Any]:
    """{contract: {"abi", "bytecode"}} for a .sol file, cached by content under .cache/evm."""
    ensure_tools()
    digest = hashlib.sha256(path.read_bytes() + (EVM_DIR / "package-lock.json").read_bytes())
    cached = CACHE / f"{path.stem}-{digest.hexdigest()[:16]}.json"
    if cached.exists():
        out: dict[str, Any] = json.loads(cached.read_text())
        return out
    result = subprocess.run(
        ["node", str(EVM_DIR / "compile.js"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EVM_DIR,
    )
    if result.returncode != 0:
        pytest.fail(f"solc-js failed on {path.name}: {result.stderr[-2000:]}")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(result.stdout)
    out = json.loads(result.stdout)
    return out


@dataclass
class Anvil:
    url: str
    process: subprocess.Popen[bytes]

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        r = httpx.post(
            self.url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []},
            timeout=10,
        )
        body = r.json()
        if "error" in body:
            raise RuntimeError(f"{method}: {body['error']}")
        return body["result"]


@contextlib.contextmanager
def running_anvil(*args: str) -> Iterator[Anvil]:
    ensure_tools()
    port = free_port()
    proc = subprocess.Popen(
        [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--silent", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    node = Anvil(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"anvil exited with {proc.returncode}: {err[-2000:]}")
            try:
                node.rpc("eth_chainId")
                break
            except (httpx.HTTPError, RuntimeError):
                if time.monotonic() > deadline:
                    pytest.fail("anvil did not answer within 30 s")
                time.sleep(0.05)
        yield node
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One local EVM node for the test session."""
    with running_anvil() as node:
        yield node


def deploy(node: Anvil, artifact: dict[str, Any], *args: Any) -> Any:
    """Deploy a compiled contract from anvil's first unlocked account; a web3 Contract."""
    from web3 import HTTPProvider, Web3

    w3 = Web3(HTTPProvider(node.url))
    account = w3.eth.accounts[0]
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx = factory.constructor(*args).transact({"from": account})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])
