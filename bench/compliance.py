"""Sanctions name screening: blocked index vs. scoring every listed name.

Generates a 20,000-entry list at run time (individuals with aliases and organisations,
names from several naming cultures), then screens a mix of perturbed listed names (typos,
reordered tokens, dropped diacritics) and unlisted names. Both matchers use the same
scorer (Jaro-Winkler on normalised token-sorted names, threshold 0.85), so the full scan
is the ground truth for recall.

    .venv/bin/python -m bench.compliance [--entries 20000] [--queries 3000] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from fusion_prime.compliance.sanctions.matcher import ListedName, NameIndex
from fusion_prime.compliance.sanctions.normalise import normalise_name

FIRST = """
Ahmad Ali Amir Anton Boris Carlos Chen Dmitri Elena Fatima Farid Giorgi Hassan Hyun Ibrahim
Igor Ivan Jamal Javier Jorge Jose Juan Karim Kim Li Lucia Luis Mahmoud Maria Marco Mehmet
Mikhail Min Mohammed Musa Nadia Nikolai Oleg Omar Pavel Pedro Rashid Reza Roman Salem Samir
Sergei Sofia Tariq Vladimir Wei Yusuf Zhang Olga Natalia Svetlana Hamid Jurgen Andre Francois
Jose-Luis Rafael Ana Aleksandr Viktor Yuri Kwame Amara Chinedu Oluwaseun Thabo Nguyen Minh
Hiroshi Kenji Ali-Reza Mustafa Khalid Abdul Aziz Yasmin Leila Rustam Timur Arman Daniyar
""".split()
LAST = """
Ivanov Petrov Smirnov Kuznetsov Popov Sokolov Lebedev Kozlov Novikov Morozov Volkov Solovyov
Vasiliev Zaitsev Pavlov Semenov Golubev Vinogradov Bogdanov Vorobyov Fedorov Mikhailov Belyaev
Tarasov Belov Komarov Orlov Kiselev Makarov Andreev Kovalenko Bondarenko Tkachenko Kravchenko
Shevchenko Boyko Melnyk Garcia Rodriguez Martinez Hernandez Lopez Gonzalez Perez Sanchez
Ramirez Torres Flores Rivera Gomez Diaz Reyes Morales Cruz Ortiz Gutierrez Chavez Ramos Ruiz
Alvarez Mendoza Castillo Jimenez Moreno Romero Herrera Medina Aguilar Vargas Guzman Mendez
Hosseini Mohammadi Rezaei Ahmadi Karimi Moradi Jafari Rahimi Kazemi Hashemi Al-Masri Haddad
Khoury Nasser Saleh Hamdan Abbas Mansour Yousef Aziz Rahman Chowdhury Hussain Qureshi Malik
Sheikh Butt Wang Li Zhang Liu Chen Yang Huang Zhao Zhou Wu Xu Sun Ma Zhu Hu Guo Lin He Gao
Kim Lee Park Choi Jung Kang Cho Yoon Jang Lim Nguyen Tran Le Pham Hoang Okafor Okonkwo Adeyemi
Mensah Mwangi Otieno Mueller Schmidt Schneider Fischer Weber Meyer Wagner Becker Hoffmann
""".split()
# surname syllables by naming culture: combined at run time into thousands of distinct names
SYLLABLES = {
    "slavic": (
        ["Ko", "Pe", "Vo", "Se", "Mi", "Za", "Bo", "Gri", "Tka", "Ra", "Le", "Du", "Sto"],
        ["val", "tro", "ro", "zhi", "len", "bar", "gda", "sha", "che", "ni", "dov", "mir"],
        ["enko", "ov", "ev", "sky", "chuk", "ovich", "in", "yuk"],
    ),
    "arabic": (
        ["Al-", "Ha", "Ka", "Na", "Sa", "Ma", "Ra", "Ja", "Fa", "Qa", "Ta", "Ba"],
        ["ss", "ddi", "sh", "l", "hm", "rr", "bb", "zz", "m", "d", "kh", "sr"],
        ["ani", "ar", "oud", "ari", "an", "awi", "i", "een"],
    ),
    "hispanic": (
        ["Ca", "Fe", "Gu", "Me", "Pa", "Sa", "Va", "Ve", "Ro", "Al", "Be", "Ar"],
        ["rr", "nd", "lv", "dr", "st", "nt", "lb", "rd", "ch", "ll", "sc", "br"],
        ["ez", "era", "illo", "ado", "ano", "ino", "ales", "uez"],
    ),
    "east_asian": (
        ["Zh", "Ch", "X", "W", "L", "Y", "H", "G", "K", "S", "T", "P"],
        ["a", "ia", "e", "uo", "ua", "o", "i", "ao", "ie", "u", "ei", "ou"],
        ["ng", "n", "ng", "o", "", "ang", "ong", "ung"],
    ),
}


def make_surname(rng: random.Random) -> str:
    heads, mids, tails = SYLLABLES[rng.choice(list(SYLLABLES))]
    middle = rng.choice(mids) if rng.random() < 0.8 else ""
    return (rng.choice(heads) + middle + rng.choice(tails)).capitalize()


ORG_A = """Orion Crimson Northern Golden Eastern Silver Pacific Baltic Caspian Atlas Falcon Phoenix
Meridian Summit Vertex Nova Zenith Horizon Sahara Aurora Everest Dragon Jade Cobalt Titan""".split()
ORG_B = """Maritime Shipping Trading Petroleum Logistics Holdings Industries Exchange Finance
Capital Energy Metals Minerals Technologies Aviation Chemicals Shipyard Mining Ventures""".split()
ORG_C = ["LTD", "LLC", "OU", "FZE", "GmbH", "S.A.", "Co.", "Group", "Company Limited", "JSC"]


def make_list(n: int, rng: random.Random) -> list[ListedName]:
    names: list[ListedName] = []
    for entity in range(1, n + 1):
        if rng.random() < 0.25:
            primary = f"{rng.choice(ORG_A)} {rng.choice(ORG_B)} {rng.choice(ORG_C)}"
            if rng.random() < 0.5:
                primary = f"{rng.choice(ORG_A)} {primary}"
            aliases: list[str] = []
            if rng.random() < 0.3:
                aliases.append(" ".join(primary.split()[:-1]))
        else:
            first = rng.choice(FIRST)
            last = rng.choice(LAST) if rng.random() < 0.3 else make_surname(rng)
            middle = f" {rng.choice(FIRST)}" if rng.random() < 0.5 else ""
            primary = f"{last.upper()}, {first}{middle}"  # OFAC spelling
            aliases = [f"{first} {typo(last, rng)}"] if rng.random() < 0.4 else []
        names.append(ListedName(entity, primary, "primary", "BENCH", str(entity)))
        names.extend(ListedName(entity, a, "aka", "BENCH", str(entity)) for a in aliases)
    return names


def typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.random()
    if kind < 0.33:
        return word[:i] + word[i + 1 :]  # deletion
    if kind < 0.66:
        return word[:i] + rng.choice("aeiouy") + word[i + 1 :]  # substitution
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # transposition


def make_queries(listed: list[ListedName], n: int, rng: random.Random) -> list[str]:
    queries = []
    for _ in range(n):
        if rng.random() < 0.5:
            tokens = rng.choice(listed).name.replace(",", "").split()
            rng.shuffle(tokens)
            if rng.random() < 0.7:
                j = rng.randrange(len(tokens))
                tokens[j] = typo(tokens[j], rng)
            queries.append(" ".join(tokens))
        else:
            queries.append(f"{rng.choice(FIRST)} {typo(make_surname(rng), rng)}")
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=3_000)
    parser.add_argument("--baseline-queries", type=int, default=400)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    listed = make_list(args.entries, rng)
    started = time.perf_counter()
    index = NameIndex(listed)
    build_s = time.perf_counter() - started
    queries = make_queries(listed, args.queries, rng)
    sizes = [len(index.candidates(normalise_name(q))) for q in queries[:500]]

    def timed(fn: object, qs: list[str]) -> tuple[float, list[set[int]]]:
        results = []
        t0 = time.perf_counter()
        for q in qs:
            results.append({m.entry.entity_id for m in fn(q, args.threshold, None)})  # type: ignore[operator]
        return time.perf_counter() - t0, results

    index.search(queries[0], args.threshold)  # warm-up
    indexed_s, indexed = timed(index.search, queries)
    base_qs = queries[: args.baseline_queries]
    full_s, full = timed(index.search_full_scan, base_qs)

    expected = sum(len(f) for f in full)
    found = sum(len(f & i) for f, i in zip(full, indexed, strict=False))
    recall = found / expected if expected else 1.0
    missed_queries = sum(1 for f, i in zip(full, indexed, strict=False) if f - i)
    hit_rate = sum(1 for f in full if f) / len(full)

    print(
        f"list: {args.entries:,} entries, {len(listed):,} names (with aliases); "
        f"index built in {build_s:.2f} s; threshold {args.threshold}"
    )
    print(f"candidates per query (blocked): median {statistics.median(sizes):.0f}, "
          f"p95 {sorted(sizes)[int(len(sizes) * 0.95)]}, of {len(listed):,}")  # fmt: skip
    print()
    print(f"{'matcher':<34}{'queries':>9}{'seconds':>10}{'screenings/s':>15}{'ms/query':>10}")
    for label, n, secs in (
        ("blocked index (token ends, 3 ch)", len(queries), indexed_s),
        ("full scan baseline (every name)", len(base_qs), full_s),
    ):
        print(f"{label:<34}{n:>9}{secs:>10.2f}{n / secs:>15,.0f}{1000 * secs / n:>10.3f}")
    print()
    print(f"speed-up: {(len(queries) / indexed_s) / (len(base_qs) / full_s):.1f}x; "
          f"recall vs full scan: {recall:.4f} ({found}/{expected} matches; "
          f"{missed_queries} of {len(base_qs)} queries missed one; "
          f"{hit_rate:.0%} of queries have a match)")  # fmt: skip
    target = 2000
    rate = len(queries) / indexed_s
    print(f"target >= {target:,} screenings/s: {'met' if rate >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
