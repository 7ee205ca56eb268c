"""Sanctions name matching against the labelled evaluation set (fixtures/eval/, built by
fixtures/make_sanctions_eval.py): aliases of one entity are the positives, other people
and companies sharing name parts the negatives. Issue 17 asks for recall >= 0.95 at
precision >= 0.95; before the token-aligned matcher (Jaro-Winkler on sorted strings)
the same set gave recall 0.49 at precision 0.74 at the default 0.85 (the test failed
then; bench/compliance.py prints the figures over thresholds)."""

from __future__ import annotations

import httpx

from fusion_prime.compliance.sanctions.evaluation import evaluate, load_listed, load_queries
from fusion_prime.compliance.sanctions.matcher import NameIndex
from fusion_prime.compliance.settings import ComplianceSettings
from tests.compliance.conftest import FIXTURES, run_cli
from tests.harness import count_rows

EVAL = FIXTURES / "eval"
DEFAULT_THRESHOLD = ComplianceSettings.model_fields["sanctions_name_threshold"].default


def test_precision_and_recall_on_entity_aliases() -> None:
    index = NameIndex(load_listed(EVAL))
    result = evaluate(index, load_queries(EVAL), DEFAULT_THRESHOLD)
    assert result.queries > 1000
    summary = f"P={result.precision:.4f} R={result.recall:.4f}; " + "; ".join(result.examples[:10])
    assert result.recall >= 0.95, summary
    assert result.precision >= 0.95, summary


async def test_variants_are_found_through_the_api(db: str, client: httpx.AsyncClient) -> None:
    for name in ("sdn.csv", "alt.csv", "opensanctions.jsonl"):
        result = await run_cli(db, "load-sanctions", str(EVAL / name))
        assert result.exit_code == 0, result.output
    queries = {q.query: q for q in load_queries(EVAL)}
    picked = {}
    for wanted in ("arabic script", "honorific", "joined given name", "cyrillic", "token order"):
        q = next(q for q in queries.values() if q.variant == wanted and q.expected)
        picked[q.query] = q.expected
    negatives = [q.query for q in queries.values() if q.expected is None][:5]
    r = await client.post("/sanctions/screen", json={"names": list(picked), "user_id": "ev-1"})
    assert r.status_code == 200, r.text
    found = {(c["query"], f"{c['list']}:{c['source_id']}") for c in r.json()["candidates"]}
    assert set(picked.items()) <= found
    r = await client.post("/sanctions/screen", json={"names": negatives, "user_id": "ev-2"})
    assert r.json()["status"] == "clear", r.json()["candidates"]
    assert await count_rows(db, "cases", "user_id = 'ev-1' AND kind = 'sanctions'") == 1
    assert await count_rows(db, "cases", "user_id = 'ev-2'") == 0
