"""Fuzzy name matching: candidate blocking, a vectorised pre-filter, token alignment.

A name is compared as its tokens (normalise.name_form: transliterated, honorifics and
legal forms dropped, spelling variants folded), not as one string:

* tokens are aligned one to one, or two adjacent tokens to one (Abdul Rahman /
  Abdulrahman, Xiao Ming / Xiaoming), whatever their order (token order is free);
* each aligned pair is scored with Indel similarity on the spelling keys, or on consonant
  skeletons when either name is written in Arabic or Hebrew script;
* the name score is the length-weighted mean of the pairs, capped a little above the
  weakest pair (one wrong surname must not hide behind matching given names);
* a token only one side has (a missing middle name or patronymic) costs a little; a
  token each side has that matches nothing (two different middle names, a different
  surname) costs a lot, and so does a one-token overlap between longer names.

Scoring every listed name this way per query would be slow, so the index groups names
by the first and last three letters of their tokens (and of their skeletons); a query is
scored only against names sharing such a key, first with rapidfuzz's vectorised
token-set ratio as a pre-filter, then with the alignment above. bench/compliance.py
measures precision and recall against a labelled set of aliases, and the speed against
scoring every name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel

from fusion_prime.compliance.sanctions.normalise import NameForm, name_form, skeleton

# tokens too common in names to narrow anything down (used only when nothing else is there)
_WEAK_TOKENS = frozenset(
    {"abd", "abu", "de", "del", "da", "van", "von", "der", "of", "and", "muhamed", "trading",
     "internatiunal", "grup", "bank", "hulding", "huldings"}
)  # fmt: skip
PAIR_FLOOR = 0.72  # below this two tokens are not the same name part
# consonant skeletons of true variants are nearly always equal; Ahmad / Muhammad differ by one
SKELETON_FLOOR = 0.88
SAME_CONSONANTS = 0.88  # two Latin keys that differ only in their vowels
WEAKEST_PAIR_MARGIN = 0.03  # the name score is at most the weakest pair + this
PREFILTER_CUTOFF = 55.0  # token-set ratio (0-100) a candidate needs to be aligned at all
PREFILTER_LIMIT = 12


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


def blocking_keys(form: NameForm, *, listed: bool = False) -> set[str]:
    """Spelling-key ends for a Latin query, skeleton starts for an Arabic-script one; a
    listed name carries both, so either kind of query finds it."""
    keys: set[str] = set()
    if listed or not form.abjad:
        strong = [t for t in form.keys if len(t) >= 3 and t not in _WEAK_TOKENS]
        for token in strong or list(form.keys):
            keys.add("p:" + token[:3])
            keys.add("s:" + token[-3:])
    if listed or form.abjad:
        for sk in form.skeletons:
            if len(sk) >= 2:
                keys.add("k:" + sk[:3])
    return keys


def _is_patronymic(key: str) -> bool:
    return key.endswith(("vich", "vna")) and len(key) > 6


@lru_cache(maxsize=1 << 20)  # name parts repeat a lot: most pairs are scored once
def _token_sim(a: str, b: str, abjad: bool) -> float:
    """Indel similarity of two spelling keys. Not Jaro-Winkler: its shared-prefix bonus
    scored Aleksandr / Aleksei at 0.94. A patronymic only aligns with a patronymic
    (Gennadyevich is not the given name Gennady)."""
    if abjad:
        sim = float(Indel.normalized_similarity(a, b))
        return sim if sim >= SKELETON_FLOOR else 0.0
    if len(a) == 1 or len(b) == 1:  # an initial
        return 0.9 if a[0] == b[0] else 0.0
    if _is_patronymic(a) != _is_patronymic(b):
        return 0.0
    sim = float(Indel.normalized_similarity(a, b))
    if sim < SAME_CONSONANTS and a[0] == b[0] and abs(len(a) - len(b)) <= 1:
        # vowels only: Nasir / Nasser, Yusuf / Youssef (Salman / Suleiman differ in length)
        if skeleton(a) == skeleton(b) and len(skeleton(a)) >= 2:
            return SAME_CONSONANTS
    return sim


@lru_cache(maxsize=65536)
def _units(tokens: tuple[str, ...]) -> list[tuple[frozenset[int], str]]:
    """Single tokens and adjacent pairs of short ones (a given name written as one word
    or two: Jose Luis, Xiao Ming, Jong Un); never a patronymic."""
    units = [(frozenset({i}), t) for i, t in enumerate(tokens)]
    units += [
        (frozenset({i, i + 1}), tokens[i] + tokens[i + 1])
        for i in range(len(tokens) - 1)
        if max(len(tokens[i]), len(tokens[i + 1])) <= 7
        and not (_is_patronymic(tokens[i]) or _is_patronymic(tokens[i + 1]))
    ]
    return units


def similarity(q: NameForm, c: NameForm) -> float:
    """Score in [0, 1] of two names being the same person or organisation."""
    abjad = q.abjad or c.abjad
    a = q.skeletons if abjad else q.keys
    b = c.skeletons if abjad else c.keys
    if not a or not b:
        return 0.0
    options: list[tuple[float, int, frozenset[int], frozenset[int], int]] = []
    for ia, ta in _units(a):
        for ib, tb in _units(b):
            if len(ia) > 1 and len(ib) > 1:
                continue
            sim = _token_sim(ta, tb, abjad)
            if sim >= PAIR_FLOOR:
                options.append((sim, len(ia) + len(ib), ia, ib, max(len(ta), len(tb))))
    options.sort(key=lambda o: (-o[0], -o[1]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    pairs: list[tuple[float, int]] = []
    for sim, _, ia, ib, weight in options:
        if ia & used_a or ib & used_b:
            continue
        used_a |= ia
        used_b |= ib
        pairs.append((sim, weight))
    if not pairs:
        return 0.0
    total = sum(w for _, w in pairs)
    mean = sum(s * w for s, w in pairs) / total
    score = min(mean, min(s for s, _ in pairs) + WEAKEST_PAIR_MARGIN)
    left_a = len(a) - len(used_a)
    left_b = len(b) - len(used_b)
    if left_a and left_b:
        score -= 0.25 * min(left_a, left_b)  # each side has a part the other contradicts
    extra = max(left_a, left_b) - min(left_a, left_b)
    if extra:
        # the longer name's first token (its given name, once "LAST, First" is turned
        # round) is not a middle name: "Abdullah al-Masri" is not "Mounir Abdullah al-Masri"
        longer_used = used_a if left_a > left_b else used_b
        per_token = 0.03 if 0 in longer_used else 0.12
        score -= per_token * extra if len(pairs) >= 2 else 0.3
    return max(0.0, score)


class NameIndex:
    """An immutable in-memory index of every listed name of the current list versions."""

    def __init__(self, names: Iterable[ListedName], generation: int = 0) -> None:
        self.generation = generation
        self.entries: list[ListedName] = list(names)
        self.forms = [name_form(e.name) for e in self.entries]
        self._keys = np.array([f.sorted_key for f in self.forms], dtype=object)
        self._skeletons = np.array([f.sorted_skeleton for f in self.forms], dtype=object)
        buckets: dict[str, list[int]] = defaultdict(list)
        for i, form in enumerate(self.forms):
            for key in blocking_keys(form, listed=True):
                buckets[key].append(i)
        self._buckets = {k: np.asarray(v, dtype=np.int64) for k, v in buckets.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def candidates(self, form: NameForm) -> np.ndarray:
        """Names sharing at least two blocking keys with the query (one for a one-token
        name): a true variant keeps both ends of its tokens but one, and a name of two
        or more tokens has four or more keys."""
        keys = blocking_keys(form)
        arrays = [self._buckets[k] for k in keys if k in self._buckets]
        if not arrays:
            return np.empty(0, dtype=np.int64)
        if len(arrays) == 1:
            return arrays[0]
        counts = np.bincount(np.concatenate(arrays), minlength=len(self.entries))
        return np.flatnonzero(counts >= (2 if len(form.keys) > 1 else 1))

    def _score(
        self, form: NameForm, indices: np.ndarray | None, threshold: float
    ) -> list[NameMatch]:
        choices = self._skeletons if form.abjad else self._keys
        query = form.sorted_skeleton if form.abjad else form.sorted_key
        pool = choices if indices is None else choices[indices]
        rough = process.extract(
            query,
            pool,
            scorer=fuzz.token_set_ratio,
            score_cutoff=PREFILTER_CUTOFF,
            limit=PREFILTER_LIMIT,
        )
        out: list[NameMatch] = []
        for _, _, pos in rough:
            row = int(pos if indices is None else indices[pos])
            score = similarity(form, self.forms[row])
            if score >= threshold:
                out.append(NameMatch(self.entries[row], str(self._keys[row]), score))
        return out

    def search(self, name: str, threshold: float, limit: int | None = 10) -> list[NameMatch]:
        """Best match per listed entity, scored only against blocked candidates."""
        form = name_form(name)
        if not form.keys:
            return []
        return _best_per_entity(self._score(form, self.candidates(form), threshold), limit)

    def search_full_scan(
        self, name: str, threshold: float, limit: int | None = 10
    ) -> list[NameMatch]:
        """Every listed name pre-filtered and scored (the speed baseline of the benchmark)."""
        form = name_form(name)
        if not form.keys:
            return []
        return _best_per_entity(self._score(form, None, threshold), limit)


def _best_per_entity(matches: list[NameMatch], limit: int | None) -> list[NameMatch]:
    best: dict[int, NameMatch] = {}
    for m in matches:
        cur = best.get(m.entry.entity_id)
        if cur is None or m.score > cur.score:
            best[m.entry.entity_id] = m
    ordered = sorted(best.values(), key=lambda m: (-m.score, m.entry.entity_id))
    return ordered if limit is None else ordered[:limit]
