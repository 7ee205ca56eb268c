"""Writes a parsed list file into the database, all of it or nothing.

A full list file (sdn.csv, FtM) creates a new list version and supersedes the previous one,
so delisted parties stop matching while old screenings keep pointing at what they matched.
alt.csv and add.csv supplement the current OFAC version. Loading a file whose SHA-256 is
already recorded for the current version changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from fusion_prime.compliance.sanctions.normalise import normalise_address, normalise_name
from fusion_prime.compliance.sanctions.parsers import (
    FULL_FORMATS,
    ListFormatError,
    ParsedAlias,
    ParsedFile,
    ParsedLocation,
)

CHUNK = 2000
Progress = Callable[[int], None]


def default_list_name(fmt: str) -> str:
    return "OpenSanctions" if fmt == "ftm" else "OFAC-SDN"


def record_count(parsed: ParsedFile) -> int:
    return len(parsed.entities) + len(parsed.aliases) + len(parsed.locations)


@dataclass(frozen=True)
class LoadResult:
    list_name: str
    version_id: int
    version_date: date
    changed: bool
    records: int


def _chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def load_parsed(
    conn: AsyncConnection,
    parsed: ParsedFile,
    *,
    list_name: str,
    file_name: str,
    sha256: str,
    version_date: date,
    progress: Progress | None = None,
) -> LoadResult:
    tick = progress or (lambda _n: None)
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"sanctions:{list_name}"},
    )
    current = (
        await conn.execute(
            text(
                "SELECT id, version_date FROM sanctions_list_versions "
                "WHERE list_name = :l AND superseded_at IS NULL"
            ),
            {"l": list_name},
        )
    ).one_or_none()
    if current is not None:
        seen = (
            await conn.execute(
                text(
                    "SELECT 1 FROM sanctions_files WHERE version_id = :v AND format = :f "
                    "AND sha256 = :s"
                ),
                {"v": current.id, "f": parsed.format, "s": sha256},
            )
        ).first()
        if seen is not None:
            tick(record_count(parsed))
            return LoadResult(list_name, int(current.id), current.version_date, False, 0)

    if parsed.format in FULL_FORMATS:
        if current is not None:
            await conn.execute(
                text("UPDATE sanctions_list_versions SET superseded_at = now() WHERE id = :id"),
                {"id": current.id},
            )
        version_id = int(
            (
                await conn.execute(
                    text(
                        "INSERT INTO sanctions_list_versions (list_name, version_date) "
                        "VALUES (:l, :d) RETURNING id"
                    ),
                    {"l": list_name, "d": version_date},
                )
            ).one()[0]
        )
        used_date = version_date
        await _insert_entities(conn, version_id, parsed, tick)
    else:
        if current is None:
            first = (parsed.aliases or parsed.locations or [None])[0]
            raise ListFormatError(
                getattr(first, "line", 1),
                f"{parsed.format} supplements a loaded list, but {list_name} has no entries "
                "yet; load sdn.csv first",
            )
        version_id = int(current.id)
        used_date = current.version_date
        await _insert_supplements(conn, version_id, parsed, tick)

    await conn.execute(
        text(
            "INSERT INTO sanctions_files (version_id, format, file_name, sha256, lines, records) "
            "VALUES (:v, :f, :n, :s, :lines, :r)"
        ),
        {
            "v": version_id,
            "f": parsed.format,
            "n": file_name,
            "s": sha256,
            "lines": parsed.lines,
            "r": record_count(parsed),
        },
    )
    return LoadResult(list_name, version_id, used_date, True, record_count(parsed))


async def _insert_entities(
    conn: AsyncConnection, version_id: int, parsed: ParsedFile, tick: Progress
) -> None:
    for chunk in _chunks(parsed.entities):
        rows = await conn.execute(
            text(
                "INSERT INTO sanctions_entities "
                "(version_id, source_id, schema, primary_name, programs, remarks, data) "
                "SELECT :v, s, sc, pn, CAST(pr AS jsonb), rm, CAST(dt AS jsonb) FROM unnest("
                "CAST(:s AS text[]), CAST(:sc AS text[]), CAST(:pn AS text[]), "
                "CAST(:pr AS text[]), CAST(:rm AS text[]), CAST(:dt AS text[])) "
                "AS x(s, sc, pn, pr, rm, dt) RETURNING id, source_id"
            ),
            {
                "v": version_id,
                "s": [e.source_id for e in chunk],
                "sc": [e.schema for e in chunk],
                "pn": [e.names[0][0] if e.names else None for e in chunk],
                "pr": [json.dumps(e.programs) for e in chunk],
                "rm": [e.remarks for e in chunk],
                "dt": [json.dumps(e.data) for e in chunk],
            },
        )
        ids = {r.source_id: int(r.id) for r in rows}
        names = [
            (ids[e.source_id], name, kind) for e in chunk for name, kind in e.names if name.strip()
        ]
        await _insert_names(conn, names)
        addresses = [
            (ids[e.source_id], currency, address) for e in chunk for currency, address in e.crypto
        ]
        if addresses:
            await conn.execute(
                text(
                    "INSERT INTO sanctions_addresses (entity_id, currency, address, normalised) "
                    "SELECT * FROM unnest(CAST(:e AS bigint[]), CAST(:c AS text[]), "
                    "CAST(:a AS text[]), CAST(:n AS text[])) ON CONFLICT DO NOTHING"
                ),
                {
                    "e": [a[0] for a in addresses],
                    "c": [a[1] for a in addresses],
                    "a": [a[2] for a in addresses],
                    "n": [normalise_address(a[2]) for a in addresses],
                },
            )
        tick(len(chunk))


async def _insert_names(conn: AsyncConnection, names: Sequence[tuple[int, str, str]]) -> None:
    if not names:
        return
    await conn.execute(
        text(
            "INSERT INTO sanctions_names (entity_id, name, normalised, kind) "
            "SELECT * FROM unnest(CAST(:e AS bigint[]), CAST(:n AS text[]), "
            "CAST(:nn AS text[]), CAST(:k AS text[])) ON CONFLICT DO NOTHING"
        ),
        {
            "e": [n[0] for n in names],
            "n": [n[1] for n in names],
            "nn": [normalise_name(n[1]) for n in names],
            "k": [n[2] for n in names],
        },
    )


async def _insert_supplements(
    conn: AsyncConnection, version_id: int, parsed: ParsedFile, tick: Progress
) -> None:
    rows = await conn.execute(
        text("SELECT id, source_id FROM sanctions_entities WHERE version_id = :v"),
        {"v": version_id},
    )
    ids = {r.source_id: int(r.id) for r in rows}
    refs: list[ParsedAlias | ParsedLocation] = [*parsed.aliases, *parsed.locations]
    for item in refs:
        if item.source_id not in ids:
            raise ListFormatError(
                item.line, f"ent_num {item.source_id} is not in the loaded SDN list"
            )
    for chunk in _chunks(parsed.aliases):
        await _insert_names(conn, [(ids[a.source_id], a.name, a.kind) for a in chunk])
        tick(len(chunk))
    for chunk in _chunks(parsed.locations):
        await conn.execute(
            text(
                "INSERT INTO sanctions_locations "
                "(entity_id, location_id, address, city, country, remarks) "
                "SELECT * FROM unnest(CAST(:e AS bigint[]), CAST(:l AS text[]), "
                "CAST(:a AS text[]), CAST(:c AS text[]), CAST(:co AS text[]), "
                "CAST(:r AS text[])) ON CONFLICT DO NOTHING"
            ),
            {
                "e": [ids[x.source_id] for x in chunk],
                "l": [x.location_id for x in chunk],
                "a": [x.address for x in chunk],
                "c": [x.city for x in chunk],
                "co": [x.country for x in chunk],
                "r": [x.remarks for x in chunk],
            },
        )
        tick(len(chunk))
