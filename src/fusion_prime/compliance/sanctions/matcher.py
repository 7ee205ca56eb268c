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
from collections.abc import Iterable
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


def _reverse(normalised: str) -> str:
    return " ".join(reversed(normalised.split()))


class NameIndex:
    """An immutable in-memory index of every listed name of the current list versions.

    A name matches when Jaro-Winkler reaches the threshold on the token-sorted form *and*
    on the reverse-sorted form; the score is the lower of the two. Jaro-Winkler rewards a
    shared prefix, so on the sorted form alone a common first name ("ivan petrov" vs "ivan
    smirnov": 0.88) would pass; requiring the other token order too removes that bias.
    """

    def __init__(self, names: Iterable[ListedName], generation: int = 0) -> None:
        self.generation = generation
        self.entries: list[ListedName] = list(names)
        normalised = [normalise_name(e.name) for e in self.entries]
        self._sorted = np.array(normalised, dtype=object)
        self._reversed = np.array([_reverse(n) for n in normalised], dtype=object)
        buckets: dict[str, list[int]] = defaultdict(list)
        for i, norm in enumerate(normalised):
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
        mask = np.zeros(len(self.entries), dtype=bool)
        for a in arrays:
            mask[a] = True
        return np.flatnonzero(mask)

    def _score(self, query: str, indices: np.ndarray | None, threshold: float) -> list[NameMatch]:
        choices = self._sorted if indices is None else self._sorted[indices]
        first = process.extract(
            query,
            choices,
            scorer=JaroWinkler.normalized_similarity,
            score_cutoff=threshold,
            limit=None,
        )
        if not first:
            return []
        positions = np.fromiter((pos for _, _, pos in first), dtype=np.int64, count=len(first))
        rows = positions if indices is None else indices[positions]
        second = process.extract(
            _reverse(query),
            self._reversed[rows],
            scorer=JaroWinkler.normalized_similarity,
            score_cutoff=threshold,
            limit=None,
        )
        return [
            NameMatch(
                self.entries[int(rows[pos])],
                str(self._sorted[rows[pos]]),
                min(float(score), float(first[pos][1])),
            )
            for _, score, pos in second
        ]

    def search(self, name: str, threshold: float, limit: int | None = 10) -> list[NameMatch]:
        """Best match per listed entity, scored only against blocked candidates."""
        query = normalise_name(name)
        if not query:
            return []
        return _best_per_entity(self._score(query, self.candidates(query), threshold), limit)

    def search_full_scan(
        self, name: str, threshold: float, limit: int | None = 10
    ) -> list[NameMatch]:
        """The exhaustive baseline: every listed name scored (kept for the benchmark)."""
        query = normalise_name(name)
        if not query:
            return []
        return _best_per_entity(self._score(query, None, threshold), limit)


def _best_per_entity(matches: list[NameMatch], limit: int | None) -> list[NameMatch]:
    best: dict[int, NameMatch] = {}
    for m in matches:
        cur = best.get(m.entry.entity_id)
        if cur is None or m.score > cur.score:
            best[m.entry.entity_id] = m
    ordered = sorted(best.values(), key=lambda m: (-m.score, m.entry.entity_id))
    return ordered if limit is None else ordered[:limit]
