"""Fuzzy name matching with candidate blocking.

Scoring every listed name per query (Jaro-Winkler on the normalised, token-sorted form)
is exact but linear in the list size. The index groups names by the first and last three
letters of each significant token; a query is only scored against names that share such a
key. A typo in the middle of a token keeps both keys, a typo at one end keeps the other,
and in a multi-token name the other tokens still carry it, so recall against the full
scan stays near 1 (bench/compliance.py measures it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import JaroWinkler

from fusion_prime.compliance.sanctions.normalise import normalise_name

# tokens too common in names to narrow anything down (used only when nothing else is there)
_WEAK_TOKENS = frozenset(
    {
        "al", "el", "bin", "ibn", "abu", "de", "del", "da", "van", "von", "der", "the",
        "of", "and", "co", "ltd", "llc", "inc", "sa", "ag", "gmbh", "company", "limited",
        "group", "corp", "corporation", "international", "trading", "bank",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ListedName:
    entity_id: int
    name: str
    kind: str
    list_name: str
    source_id: str


@dataclass(frozen=True)
class NameMatch:
    entry: ListedName
    normalised: str
    score: float


def blocking_keys(normalised: str) -> set[str]:
    tokens = normalised.split()
    strong = [t for t in tokens if len(t) >= 3 and t not in _WEAK_TOKENS]
    keys: set[str] = set()
    for token in strong or tokens:
        keys.add("p:" + token[:3])
        keys.add("s:" + token[-3:])
    return keys


class NameIndex:
    """An immutable in-memory index of every listed name of the current list versions."""

    def __init__(self, names: Iterable[ListedName], generation: int = 0) -> None:
        self.generation = generation
        self.entries: list[ListedName] = list(names)
        self.normalised: list[str] = [normalise_name(e.name) for e in self.entries]
        buckets: dict[str, list[int]] = defaultdict(list)
        for i, norm in enumerate(self.normalised):
            for key in blocking_keys(norm):
                buckets[key].append(i)
        self._buckets = {k: np.asarray(v, dtype=np.int64) for k, v in buckets.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def candidates(self, normalised: str) -> np.ndarray:
        arrays = [self._buckets[k] for k in blocking_keys(normalised) if k in self._buckets]
        if not arrays:
            return np.empty(0, dtype=np.int64)
        if len(arrays) == 1:
            return arrays[0]
        return np.unique(np.concatenate(arrays))

    def _score(
        self, query: str, indices: Sequence[int] | np.ndarray, threshold: float, limit: int | None
    ) -> list[NameMatch]:
        choices = [self.normalised[i] for i in indices]
        found = process.extract(
            query,
            choices,
            scorer=JaroWinkler.normalized_similarity,
            score_cutoff=threshold,
            limit=limit,
        )
        return [
            NameMatch(self.entries[int(indices[pos])], choice, float(score))
            for choice, score, pos in found
        ]

    def search(self, name: str, threshold: float, limit: int | None = 10) -> list[NameMatch]:
        """Best match per listed entity, scored only against blocked candidates."""
        query = normalise_name(name)
        if not query:
            return []
        return _best_per_entity(self._score(query, self.candidates(query), threshold, None), limit)

    def search_full_scan(
        self, name: str, threshold: float, limit: int | None = 10
    ) -> list[NameMatch]:
        """The exhaustive baseline: every listed name scored (kept for the benchmark)."""
        query = normalise_name(name)
        if not query:
            return []
        everything = range(len(self.entries))
        return _best_per_entity(self._score(query, everything, threshold, None), limit)


def _best_per_entity(matches: list[NameMatch], limit: int | None) -> list[NameMatch]:
    best: dict[int, NameMatch] = {}
    for m in matches:
        cur = best.get(m.entry.entity_id)
        if cur is None or m.score > cur.score:
            best[m.entry.entity_id] = m
    ordered = sorted(best.values(), key=lambda m: (-m.score, m.entry.entity_id))
    return ordered if limit is None else ordered[:limit]
