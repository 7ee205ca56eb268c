"""A local EVM node for `fusion-prime up`: anvil from tools/evm (the tests' npm install),
the escrow factory deployed on it once, and the relayer settings that point settlement at it.

Only for local development: anvil's unlocked accounts sign everything. The chain is kept in
<data_dir>/chain/state.json (anvil --state), so the relayer's checkpoint in settlement's
database stays valid from one `up` to the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fusion_prime.platform.embedded import free_port, port_free

REPO_ROOT = Path(__file__).resolve().parents[3]
ANVIL = REPO_ROOT / "tools" / "evm" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin"
ANVIL_BIN = ANVIL / "anvil"
DEFAULT_PORT = 8545
CHAIN_ID = 31337  # anvil's
# few confirmations on a local node that mines a block per second
LOCAL_CONFIRMATIONS = "2"


@dataclass
class LocalChain:
    url: str
    process: subprocess.Popen[bytes]
    factory: str
    start_block: int
    log_path: Path

    def env(self) -> dict[str, str]:
        return {
            "ETH_RPC_URL": self.url,
            "SETTLEMENT_CHAIN_ID": str(CHAIN_ID),
            "SETTLEMENT_FACTORY_ADDRESS": self.factory,
            "SETTLEMENT_START_BLOCK": str(self.start_block),
            "SETTLEMENT_CONFIRMATIONS": os.environ.get(
                "SETTLEMENT_CONFIRMATIONS", LOCAL_CONFIRMATIONS
            ),
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # anvil writes --state on exit
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def deployment_file(data_dir: Path) -> Path:
    return data_dir / "chain" / "deployment.json"


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 10) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    answer = httpx.post(url, json=body, timeout=timeout).json()
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def start_local_chain(data_dir: Path) -> LocalChain | None:
    """Anvil on 127.0.0.1 (block time 1 s) with the factory deployed; None when anvil is not
    installed here (`bash tools/evm/install.sh` installs it; the tests do)."""
    if not ANVIL_BIN.exists():
        return None
    chain_dir = data_dir / "chain"
    chain_dir.mkdir(parents=True, exist_ok=True)
    port = DEFAULT_PORT if port_free(DEFAULT_PORT) else free_port()
    log_path = data_dir / "logs" / "anvil.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        process = subprocess.Popen(
            [
                str(ANVIL_BIN),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--block-time",
                "1",
                "--state",
                str(chain_dir / "state.json"),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            rpc(url, "eth_chainId")
            break
        except (httpx.HTTPError, RuntimeError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"anvil did not start; see {log_path}") from None
            time.sleep(0.1)
    record = deployment_file(data_dir)
    factory, block = _factory(url, record)
    # where this run's node listens, for `fusion-prime settlement demo-escrow`
    record.write_text(
        json.dumps({"chain_id": CHAIN_ID, "factory": factory, "block": block, "url": url})
    )
    return LocalChain(url, process, factory, block, log_path)


def _factory(url: str, record: Path) -> tuple[str, int]:
    """The factory deployed on this chain before (still has code), or a new deployment."""
    if record.exists():
        known = json.loads(record.read_text())
        if rpc(url, "eth_getCode", [known["factory"], "latest"]) not in ("0x", "0x0"):
            return str(known["factory"]), int(known["block"])
    from fusion_prime.settlement.chain import artifact

    sender = rpc(url, "eth_accounts")[0]
    tx = rpc(
        url,
        "eth_sendTransaction",
        [{"from": sender, "data": artifact()["EscrowFactory"]["bytecode"], "gas": hex(5_000_000)}],
    )
    receipt = _receipt(url, tx)
    return receipt["contractAddress"].lower(), int(receipt["blockNumber"], 16)


def _receipt(url: str, tx: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = rpc(url, "eth_getTransactionReceipt", [tx])
        if receipt is not None:
            if int(receipt["status"], 16) != 1:
                raise RuntimeError(f"transaction {tx} reverted")
            return dict(receipt)
        time.sleep(0.2)
    raise TimeoutError(f"transaction {tx} not mined within {timeout} s")


def demo_escrow(url: str, factory: str, amount_wei: int = 10**16) -> dict[str, Any]:
    """Create a 2-of-3 ether escrow from anvil's first account and approve it by payer and
    payee (unlocked dev accounts: a local node only). The escrow address and transactions."""
    from web3 import Web3

    from fusion_prime.settlement.chain import artifact

    built = artifact()
    w3 = Web3()
    payer, payee, arbiter = rpc(url, "eth_accounts")[:3]
    factory_c = w3.eth.contract(
        address=Web3.to_checksum_address(factory), abi=built["EscrowFactory"]["abi"]
    )
    zero = b"\x00" * 16
    data = factory_c.encode_abi(
        "create",
        [
            Web3.to_checksum_address(payee),
            Web3.to_checksum_address(arbiter),
            "0x" + "00" * 20,
            amount_wei,
            0,
            2,
            zero,
        ],
    )
    tx = rpc(
        url,
        "eth_sendTransaction",
        [{"from": payer, "to": factory, "data": data, "value": hex(amount_wei)}],
    )
    receipt = _receipt(url, tx)
    topic = "0x" + Web3.keccak(
        text="EscrowDeployed(address,address,address,address,address,uint8,uint256,uint64,uint8,bytes16)"
    ).hex().removeprefix("0x")
    (created,) = [lg for lg in receipt["logs"] if lg["topics"][0] == topic]
    escrow = "0x" + created["topics"][1][-40:]
    escrow_c = w3.eth.contract(address=Web3.to_checksum_address(escrow), abi=built["Escrow"]["abi"])
    approvals = []
    for who in (payer, payee):
        data = escrow_c.encode_abi("approve", [zero])
        approval = rpc(url, "eth_sendTransaction", [{"from": who, "to": escrow, "data": data}])
        _receipt(url, approval)
        approvals.append(approval)
    return {
        "escrow": escrow,
        "create_tx": tx,
        "approve_txs": approvals,
        "payer": payer,
        "payee": payee,
        "arbiter": arbiter,
        "amount_wei": amount_wei,
    }
