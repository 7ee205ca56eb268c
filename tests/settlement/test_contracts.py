"""The committed escrow build is what contracts/EscrowFactory.sol compiles to."""

from __future__ import annotations

from fusion_prime.settlement.chain import ARTIFACT, EVENTS, artifact, event_topics
from tests.evm import compile_solidity
from tests.harness import REPO_ROOT


def test_the_committed_abi_and_bytecode_match_the_source() -> None:
    built = compile_solidity(REPO_ROOT / "contracts" / "EscrowFactory.sol")
    deployable = {name: art for name, art in built.items() if art["bytecode"] != "0x"}
    committed = artifact()
    assert sorted(committed) == sorted(deployable) == ["Escrow", "EscrowFactory"]
    for name, art in deployable.items():
        assert committed[name]["abi"] == art["abi"], f"{name} ABI differs: run `make contracts`"
        assert committed[name]["bytecode"] == art["bytecode"], (
            f"{ARTIFACT.name}: {name} bytecode differs from the source: run `make contracts`"
        )


def test_every_event_settlement_understands_is_in_the_abi() -> None:
    names = {e["name"] for e in artifact()["EscrowFactory"]["abi"] if e["type"] == "event"}
    assert set(EVENTS) <= names
    assert len(event_topics()) == len(EVENTS)
