"""Sanctions lists: loading the real formats (checked in the database), idempotency,
refusals with line numbers, and screening hits and near misses by name and address."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.compliance.conftest import FIXTURES, load_fixture, run_cli
from tests.harness import count_rows, fetch, fetchval

KOVALENKO_ETH = "0x7F367cC41522cE07553e823bf3be79A889DEbe1B"
KOVALENKO_XBT = "1FzWLkAahHooV3kzTgyx6qsswXJ6sCXkSR"


async def _load_ofac(db: str) -> None:
    for name in ("sdn.csv", "alt.csv", "add.csv"):
        await load_fixture(db, name, "--version-date", "2026-11-28")


async def test_ofac_files_load_into_the_database(db: str) -> None:
    await _load_ofac(db)
    versions = await fetch(
        db, "SELECT list_name, version_date::text AS d FROM sanctions_list_versions"
    )
    assert [(v["list_name"], v["d"]) for v in versions] == [("OFAC-SDN", "2026-11-28")]
    assert await count_rows(db, "sanctions_entities") == 5
    assert await count_rows(db, "sanctions_files") == 3
    names = await fetch(
        db,
        "SELECT n.name, n.kind, n.normalised FROM sanctions_names n "
        "JOIN sanctions_entities e ON e.id = n.entity_id WHERE e.source_id = '10001' ORDER BY n.id",
    )
    assert [(r["name"], r["kind"]) for r in names] == [
        ("KOVALENKO, Dmitri Ivanovich", "primary"),
        ("KOVALENKO, Dmitry", "aka"),
        ("COVALENCO, Dmitrii", "aka"),
    ]
    assert names[1]["normalised"] == "dmitry kovalenko"
    addrs = await fetch(
        db, "SELECT currency, address, normalised FROM sanctions_addresses ORDER BY id"
    )
    assert [(a["currency"], a["address"]) for a in addrs] == [
        ("XBT", KOVALENKO_XBT),
        ("ETH", KOVALENKO_ETH),
        ("USDT", "TXm8aFhLMSGb4YHy4fdJ8dP1rtmo2WM8xY"),
        ("XBT", "bc1qd7lqg0h3n5hyvzqsf6dnv0c2gvsy4zqwld4sqz"),
    ]
    assert addrs[1]["normalised"] == KOVALENKO_ETH.lower()
    city = await fetchval(db, "SELECT city FROM sanctions_locations WHERE location_id = '602'")
    assert city == "Limassol"
    programs = await fetchval(db, "SELECT programs FROM sanctions_entities WHERE source_id='10001'")
    assert "CYBER2" in programs


async def test_reloading_the_same_file_changes_nothing(db: str) -> None:
    await _load_ofac(db)
    before = await fetch(db, "SELECT id, source_id FROM sanctions_entities ORDER BY id")
    names_before = await count_rows(db, "sanctions_names")
    again = await load_fixture(db, "sdn.csv", "--version-date", "2026-11-28")
    assert "nothing changed" in again.output
    again_alt = await load_fixture(db, "alt.csv")
    assert "nothing changed" in again_alt.output
    assert await fetch(db, "SELECT id, source_id FROM sanctions_entities ORDER BY id") == before
    assert await count_rows(db, "sanctions_names") == names_before
    assert await count_rows(db, "sanctions_list_versions") == 1
    assert await count_rows(db, "sanctions_files") == 3


async def test_new_version_supersedes_the_old(db: str, tmp_path: Path) -> None:
    await _load_ofac(db)
    newer = tmp_path / "sdn.csv"
    # the next publication delists 10003 and keeps the rest
    lines = (FIXTURES / "sdn.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    newer.write_text("".join(line for line in lines if not line.startswith("10003")), "utf-8")
    await load_fixture(db, str(newer), "--version-date", "2026-11-29")
    current = await fetch(
        db,
        "SELECT version_date::text AS d FROM sanctions_list_versions WHERE superseded_at IS NULL",
    )
    assert [r["d"] for r in current] == ["2026-11-29"]
    assert await count_rows(db, "sanctions_list_versions") == 2


async def test_malformed_file_is_refused_with_line_and_nothing_loaded(
    db: str, tmp_path: Path
) -> None:
    bad = tmp_path / "sdn.csv"
    good_lines = (FIXTURES / "sdn.csv").read_text(encoding="utf-8").splitlines()[:3]
    bad.write_text("\n".join([*good_lines, '10009,"SHORT ROW",-0- ']) + "\n", "utf-8")
    result = await run_cli(db, "load-sanctions", str(bad))
    assert result.exit_code == 1
    assert "line 4" in result.output
    assert "nothing was loaded" in result.output
    assert await count_rows(db, "sanctions_entities") == 0
    assert await count_rows(db, "sanctions_list_versions") == 0

    ftm = tmp_path / "list.jsonl"
    ftm.write_text(
        '{"id": "x1", "schema": "Person", "properties": {"name": ["Ok Person"]}}\n'
        '{"id": "x2", "schema": "Person", "properties": {"name": "not a list"}}\n'
    )
    result = await run_cli(db, "load-sanctions", str(ftm))
    assert result.exit_code == 1
    assert "line 2" in result.output
    assert await count_rows(db, "sanctions_entities") == 0


async def test_unknown_format_and_orphan_alias_are_refused(db: str, tmp_path: Path) -> None:
    odd = tmp_path / "list.xml"
    odd.write_text("<sdnList/>")
    result = await run_cli(db, "load-sanctions", str(odd))
    assert result.exit_code == 2
    assert "unknown list format" in result.output
    result = await run_cli(db, "load-sanctions", str(odd), "--format", "ofac-xml")
    assert result.exit_code == 2
    # an alias file before its SDN file: refused, nothing stored
    result = await run_cli(db, "load-sanctions", str(FIXTURES / "alt.csv"))
    assert result.exit_code == 1
    assert "line 1" in result.output
    await load_fixture(db, "sdn.csv")
    orphan = tmp_path / "alt.csv"
    orphan.write_text('10001,901,"aka","KOVAL, D.",-0- \n99999,902,"aka","NOBODY",-0- \n')
    result = await run_cli(db, "load-sanctions", str(orphan))
    assert result.exit_code == 1
    assert "line 2" in result.output
    assert await count_rows(db, "sanctions_names", "name = 'KOVAL, D.'") == 0


async def test_name_screening_hits_and_near_misses(db: str, client: httpx.AsyncClient) -> None:
    await _load_ofac(db)
    await load_fixture(db, "opensanctions.jsonl")
    r = await client.post(
        "/sanctions/screen",
        json={
            "names": [
                "Dmitry Kovalenko",  # alias, reordered
                "Jurgen Muller-Schafer",  # no diacritics
                "Amara Okonkwo Bello",  # FtM, punctuation differs
                "Orion Maritime Holdings",
            ],
            "user_id": "user-42",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "hit"
    by_query = {c["query"]: c for c in body["candidates"]}
    assert by_query["Dmitry Kovalenko"]["matched"] == "KOVALENKO, Dmitry"
    assert by_query["Dmitry Kovalenko"]["match_kind"] == "aka"
    assert by_query["Dmitry Kovalenko"]["score"] == 1.0
    assert by_query["Jurgen Muller-Schafer"]["source_id"] == "10003"
    assert by_query["Amara Okonkwo Bello"]["list"] == "OpenSanctions"
    assert by_query["Orion Maritime Holdings"]["score"] >= 0.85
    assert "name score" in by_query["Orion Maritime Holdings"]["reason"]
    stored = await fetch(db, "SELECT status, user_id, case_id FROM sanctions_screenings")
    assert stored[0]["status"] == "hit"
    assert stored[0]["case_id"] is not None
    assert await count_rows(db, "cases", "kind = 'sanctions' AND user_id = 'user-42'") == 1

    # near misses: similar-looking but below 0.85
    r = await client.post("/sanctions/screen", json={"names": ["Dmitri Karamazov", "Orion Bakery"]})
    assert r.json()["status"] == "clear"
    assert r.json()["candidates"] == []
    # a typo of a listed name is a hit
    loose = await client.post("/sanctions/screen", json={"names": ["Dmitri Kowalenko"]})
    assert loose.json()["status"] == "hit"
    assert await count_rows(db, "sanctions_screenings") == 3
    # scores and candidates went into the hash chain and survive the jsonb round trip
    assert (await run_cli(db, "verify-audit")).exit_code == 0


async def test_address_screening_exact_after_normalisation(
    db: str, client: httpx.AsyncClient
) -> None:
    await _load_ofac(db)
    await load_fixture(db, "opensanctions.jsonl")
    r = await client.post(
        "/sanctions/screen",
        json={
            "addresses": [
                KOVALENKO_ETH.lower(),  # EVM: case does not matter
                "0xabcdef0123456789abcdef0123456789abcdef01",  # FtM CryptoWallet
                "BC1QD7LQG0H3N5HYVZQSF6DNV0C2GVSY4ZQWLD4SQZ",  # bech32: case-insensitive
            ]
        },
    )
    hits = {c["query"]: c for c in r.json()["candidates"]}
    assert hits[KOVALENKO_ETH.lower()]["source_id"] == "10001"
    assert hits["0xabcdef0123456789abcdef0123456789abcdef01"]["list"] == "OpenSanctions"
    assert hits["BC1QD7LQG0H3N5HYVZQSF6DNV0C2GVSY4ZQWLD4SQZ"]["source_id"] == "10005"
    assert len(hits) == 3

    near = [
        KOVALENKO_XBT.lower(),  # base58 is case-sensitive: a different address
        KOVALENKO_ETH[:-1] + "C",  # one character off
        KOVALENKO_XBT[:-1],
    ]
    r = await client.post("/sanctions/screen", json={"addresses": near})
    assert r.json()["status"] == "clear"
    r = await client.post("/sanctions/screen", json={"addresses": [KOVALENKO_XBT]})
    assert r.json()["candidates"][0]["match_kind"] == "XBT address"


async def test_screen_input_errors_name_fields(client: httpx.AsyncClient) -> None:
    r = await client.post("/sanctions/screen", json={})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "names"
    r = await client.post("/sanctions/screen", json={"names": [""], "threshold": 2})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"names.0", "threshold"}


async def test_index_follows_new_loads_and_lists_are_listed(
    db: str, client: httpx.AsyncClient
) -> None:
    before = await client.post("/sanctions/screen", json={"names": ["Amara Bello"]})
    assert before.json()["status"] == "clear"  # nothing loaded yet
    await load_fixture(db, "opensanctions.jsonl")
    after = await client.post("/sanctions/screen", json={"names": ["Amara Bello"]})
    assert after.json()["status"] == "hit"
    assert after.json()["candidates"][0]["match_kind"] == "alias"
    lists = (await client.get("/sanctions/lists")).json()["items"]
    assert [(x["list"], x["version_date"], x["current"], x["entities"]) for x in lists] == [
        ("OpenSanctions", "2026-11-20", True, 2)
    ]
    assert lists[0]["files"][0]["format"] == "ftm"
    events = await fetch(db, "SELECT event_type, envelope FROM outbox ORDER BY seq")
    assert [e["event_type"] for e in events] == ["sanctions.screened", "sanctions.screened"]
    assert await count_rows(db, "audit_log", "kind = 'sanctions.screened'") == 2


async def test_caller_cannot_raise_the_threshold_above_the_configured_one(
    db: str, client: httpx.AsyncClient
) -> None:
    """Issue 17: a per-request threshold of 0.99 turned a hit into `clear` (dodging the
    screening); only a stricter-for-the-customer, i.e. lower, threshold may be asked for."""
    await _load_ofac(db)
    raised = await client.post(
        "/sanctions/screen", json={"names": ["Dmitri Kowalenko"], "threshold": 0.99}
    )
    assert raised.status_code == 422, raised.text
    assert raised.json()["errors"][0]["field"] == "threshold"
    assert "0.85" in raised.json()["detail"]
    assert await count_rows(db, "sanctions_screenings") == 0
    same = await client.post(
        "/sanctions/screen", json={"names": ["Dmitri Kowalenko"], "threshold": 0.85}
    )
    assert same.json()["status"] == "hit"
    lower = await client.post(
        "/sanctions/screen", json={"names": ["Dmitri Kowalenko"], "threshold": 0.7}
    )
    assert lower.status_code == 200
    assert lower.json()["threshold"] == 0.7
    stored = await fetch(db, "SELECT threshold::text AS t FROM sanctions_screenings ORDER BY 1")
    assert [r["t"] for r in stored] == ["0.700", "0.850"]


async def test_loading_a_list_version_rescreens_screened_users(
    db: str, client: httpx.AsyncClient
) -> None:
    """Issue 17: a user screened clear stayed clear when a new list version named them."""
    r = await client.post("/sanctions/screen", json={"names": ["Amara Bello"], "user_id": "r-1"})
    assert r.json()["status"] == "clear"
    r = await client.post("/sanctions/screen", json={"names": ["Jane Doe"], "user_id": "r-2"})
    assert r.json()["status"] == "clear"
    loaded = await load_fixture(db, "opensanctions.jsonl")
    assert "re-screened 2 users: 1 hit" in loaded.output
    rows = await fetch(
        db,
        "SELECT user_id, status, case_id FROM sanctions_screenings ORDER BY created_at, user_id",
    )
    assert [(x["user_id"], x["status"]) for x in rows] == [
        ("r-1", "clear"),
        ("r-2", "clear"),
        ("r-1", "hit"),
        ("r-2", "clear"),
    ]
    assert rows[2]["case_id"] is not None
    status = (await client.get("/users/r-1/compliance-status")).json()
    assert status["sanctions"]["status"] == "potential_match"
    actors = await fetch(
        db, "SELECT actor FROM audit_log WHERE kind = 'sanctions.screened' ORDER BY seq"
    )
    assert [a["actor"] for a in actors][-2:] == ["list-load:OpenSanctions"] * 2
    # loading the same file again changes nothing and re-screens nobody
    again = await load_fixture(db, "opensanctions.jsonl")
    assert "nothing changed" in again.output
    assert await count_rows(db, "sanctions_screenings") == 4
    assert await count_rows(db, "cases", "kind = 'sanctions'") == 1
