"""Precision and recall of the name matcher against a labelled set of list files and queries.

The set (tests/compliance/fixtures/eval/, built by make_sanctions_eval.py there) holds
list files in the published shapes (OFAC sdn.csv + alt.csv, OpenSanctions FtM JSON lines)
and queries labelled with the entity they are an alias of, or with none (another person
or company that shares parts of a listed name). Used by the test suite (a floor) and by
bench/compliance.py (the figures, over thresholds).

Counting, per query: every returned entity other than the expected one is a false
positive; the expected entity returned is a true positive, not returned a false negative.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fusion_prime.compliance.sanctions.matcher import ListedName, NameIndex
from fusion_prime.compliance.sanctions.parsers import parse_alt, parse_ftm, parse_sdn


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    expected: str | None  # "<list>:<source id>", None for a name that is not listed
    variant: str


@dataclass
class Evaluation:
    threshold: float
    queries: int = 0
    true_pos: int = 0
    false_pos: int = 0
    false_neg: int = 0
    missed: Counter[str] = field(default_factory=Counter)  # variant -> false negatives
    confused: Counter[str] = field(default_factory=Counter)  # variant -> false positives
    examples: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        found = self.true_pos + self.false_pos
        return self.true_pos / found if found else 1.0

    @property
    def recall(self) -> float:
        wanted = self.true_pos + self.false_neg
        return self.true_pos / wanted if wanted else 1.0


def _lines(path: Path) -> io.StringIO:
    return io.StringIO(path.read_text(encoding="utf-8"), newline="")


def load_listed(directory: Path) -> list[ListedName]:
    """The list files of the set, parsed with the loader's own parsers."""
    names: list[ListedName] = []
    ids: dict[str, int] = {}

    def entity(key: str) -> int:
        return ids.setdefault(key, len(ids) + 1)

    sdn = parse_sdn(_lines(directory / "sdn.csv"))
    for e in sdn.entities:
        for name, kind in e.names:
            names.append(
                ListedName(entity(f"OFAC-SDN:{e.source_id}"), name, kind, "OFAC-SDN", e.source_id)
            )
    for a in parse_alt(_lines(directory / "alt.csv")).aliases:
        key = f"OFAC-SDN:{a.source_id}"
        names.append(ListedName(entity(key), a.name, a.kind, "OFAC-SDN", a.source_id))
    for e in parse_ftm(_lines(directory / "opensanctions.jsonl")).entities:
        for name, kind in e.names:
            key = f"OpenSanctions:{e.source_id}"
            names.append(ListedName(entity(key), name, kind, "OpenSanctions", e.source_id))
    return names


def load_queries(directory: Path) -> list[LabelledQuery]:
    rows = (
        json.loads(line) for line in (directory / "queries.jsonl").read_text("utf-8").splitlines()
    )
    return [LabelledQuery(r["query"], r["expected"], r["variant"]) for r in rows]


def evaluate(index: NameIndex, queries: list[LabelledQuery], threshold: float) -> Evaluation:
    result = Evaluation(threshold)
    for q in queries:
        result.queries += 1
        found = {
            f"{m.entry.list_name}:{m.entry.source_id}"
            for m in index.search(q.query, threshold, None)
        }
        if q.expected is not None:
            if q.expected in found:
                result.true_pos += 1
            else:
                result.false_neg += 1
                result.missed[q.variant] += 1
                result.examples.append(f"missed {q.query!r} ({q.variant}) -> {q.expected}")
        wrong = found - {q.expected}
        if wrong:
            result.false_pos += len(wrong)
            result.confused[q.variant] += len(wrong)
            result.examples.append(f"wrong {q.query!r} ({q.variant}) -> {sorted(wrong)}")
    return result
