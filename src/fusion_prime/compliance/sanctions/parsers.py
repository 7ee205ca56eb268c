"""Parsers for the sanctions list formats we load, validating every line before any write.

OFAC publishes sdn.csv (entries), alt.csv (aliases) and add.csv (addresses): no header row,
fixed column order, "-0-" for an empty field, and crypto addresses only as text inside the
remarks of sdn.csv ("Digital Currency Address - XBT 1abc...;"). OpenSanctions publishes
FollowTheMoney entities as JSON lines; crypto wallets are separate `CryptoWallet` entities
whose `holder` points at the sanctioned party.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

ListFormat = Literal["ofac-sdn", "ofac-alt", "ofac-add", "ftm"]
FORMATS: tuple[ListFormat, ...] = ("ofac-sdn", "ofac-alt", "ofac-add", "ftm")
# formats that carry a whole list (and so create a new list version) vs. supplements
FULL_FORMATS: frozenset[str] = frozenset({"ofac-sdn", "ftm"})

OFAC_NULL = "-0-"
_SDN_COLUMNS = 12
_ALT_COLUMNS = 5
_ADD_COLUMNS = 6
# "Digital Currency Address - XBT 1abc...;" (a network may sit between currency and address)
_CRYPTO = re.compile(r"Digital Currency Address - ([^;]+)")
_FTM_PARTIES = frozenset(
    {"Person", "Organization", "Company", "LegalEntity", "PublicBody", "Vessel", "Airplane"}
)
_FTM_ALIASES = ("alias", "weakAlias", "previousName")


class ListFormatError(Exception):
    """A file that cannot be loaded; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class ParsedEntity:
    source_id: str
    schema: str
    names: list[tuple[str, str]] = field(default_factory=list)  # (name, kind)
    programs: list[str] = field(default_factory=list)
    remarks: str | None = None
    crypto: list[tuple[str, str]] = field(default_factory=list)  # (currency, address)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedAlias:
    line: int
    source_id: str
    alias_id: str
    kind: str
    name: str


@dataclass(frozen=True)
class ParsedLocation:
    line: int
    source_id: str
    location_id: str
    address: str | None
    city: str | None
    country: str | None
    remarks: str | None


@dataclass
class ParsedFile:
    format: ListFormat
    entities: list[ParsedEntity] = field(default_factory=list)
    aliases: list[ParsedAlias] = field(default_factory=list)
    locations: list[ParsedLocation] = field(default_factory=list)
    skipped: int = 0
    lines: int = 0
    latest_change: date | None = None


def guess_format(filename: str) -> ListFormat | None:
    lower = filename.lower()
    base = lower.rsplit("/", 1)[-1]
    if base == "sdn.csv":
        return "ofac-sdn"
    if base == "alt.csv":
        return "ofac-alt"
    if base == "add.csv":
        return "ofac-add"
    if base.endswith((".jsonl", ".ftm.json", ".ijson")):
        return "ftm"
    return None


def _cell(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", OFAC_NULL) else value


def _number(row: list[str], column: int, label: str, line: int) -> str:
    """An OFAC id column (ent_num, alt_num, add_num): digits only."""
    raw = row[column].strip()
    if not raw.isdigit():
        raise ListFormatError(line, f"{label} {raw!r} is not a number")
    return raw


def _rows(lines: Iterable[str], columns: int) -> Iterable[tuple[int, list[str]]]:
    reader = csv.reader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ListFormatError(reader.line_num, f"malformed CSV: {exc}") from exc
        line = reader.line_num
        # the published files end with a DOS end-of-file character on its own line
        if not row or all(not c.strip() or c.strip() == "\x1a" for c in row):
            continue
        if len(row) != columns:
            raise ListFormatError(line, f"expected {columns} columns, found {len(row)}")
        yield line, row


def parse_sdn(lines: Iterable[str]) -> ParsedFile:
    """sdn.csv: ent_num, SDN_Name, SDN_Type, Program, Title, Call_Sign, Vess_type,
    Tonnage, GRT, Vess_flag, Vess_owner, Remarks."""
    out = ParsedFile("ofac-sdn")
    seen: set[str] = set()
    for line, row in _rows(lines, _SDN_COLUMNS):
        out.lines = line
        ent = _number(row, 0, "ent_num", line)
        if ent in seen:
            raise ListFormatError(line, f"ent_num {ent} appears twice")
        seen.add(ent)
        name = _cell(row[1])
        if name is None:
            raise ListFormatError(line, "SDN_Name is empty")
        remarks = _cell(row[11])
        entity = ParsedEntity(
            source_id=ent,
            schema=_cell(row[2]) or "entity",
            names=[(name, "primary")],
            programs=[
                p.strip("[] ") for p in re.split(r"\]\s*\[", _cell(row[3]) or "") if p.strip("[] ")
            ],
            remarks=remarks,
            data={
                k: v
                for k, v in {
                    "title": _cell(row[4]),
                    "call_sign": _cell(row[5]),
                    "vessel_type": _cell(row[6]),
                    "vessel_flag": _cell(row[9]),
                    "vessel_owner": _cell(row[10]),
                }.items()
                if v is not None
            },
        )
        if remarks:
            for found in _CRYPTO.findall(remarks):
                tokens = found.replace(",", " ").split()
                if len(tokens) < 2:
                    raise ListFormatError(line, f"digital currency address without value: {found}")
                entity.crypto.append((tokens[0].upper(), tokens[-1].rstrip(".")))
        out.entities.append(entity)
    return out


def parse_alt(lines: Iterable[str]) -> ParsedFile:
    """alt.csv: ent_num, alt_num, alt_type, alt_name, alt_remarks."""
    out = ParsedFile("ofac-alt")
    for line, row in _rows(lines, _ALT_COLUMNS):
        out.lines = line
        ent = _number(row, 0, "ent_num", line)
        alt_num = _number(row, 1, "alt_num", line)
        name = _cell(row[3])
        if name is None:
            raise ListFormatError(line, "alt_name is empty")
        kind = (_cell(row[2]) or "aka").lower()
        out.aliases.append(ParsedAlias(line, ent, alt_num, kind, name))
    return out


def parse_add(lines: Iterable[str]) -> ParsedFile:
    """add.csv: ent_num, add_num, address, city/state/province/postal, country, remarks."""
    out = ParsedFile("ofac-add")
    for line, row in _rows(lines, _ADD_COLUMNS):
        out.lines = line
        ent = _number(row, 0, "ent_num", line)
        add_num = _number(row, 1, "add_num", line)
        out.locations.append(
            ParsedLocation(
                line, ent, add_num, _cell(row[2]), _cell(row[3]), _cell(row[4]), _cell(row[5])
            )
        )
    return out


def _strings(props: dict[str, Any], key: str, line: int) -> list[str]:
    value = props.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ListFormatError(line, f"properties.{key} must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def _refs(props: dict[str, Any], key: str, line: int) -> list[str]:
    """Entity references: ids, or nested entities (OpenSanctions' nested export)."""
    value = props.get(key, [])
    if not isinstance(value, list):
        raise ListFormatError(line, f"properties.{key} must be a list")
    out: list[str] = []
    for item in value:
        ref = item.get("id") if isinstance(item, dict) else item
        if not isinstance(ref, str) or not ref:
            raise ListFormatError(line, f"properties.{key} holds an entry without an id")
        out.append(ref)
    return out


def parse_ftm(lines: Iterable[str]) -> ParsedFile:
    """FollowTheMoney entities, one JSON object per line."""
    out = ParsedFile("ftm")
    parties: dict[str, ParsedEntity] = {}
    wallets: list[tuple[str, list[str], list[str], list[str]]] = []
    for line, raw in enumerate(lines, start=1):
        out.lines = line
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ListFormatError(line, f"invalid JSON: {exc.msg}") from exc
        if not isinstance(obj, dict):
            raise ListFormatError(line, "expected a JSON object")
        ent_id, schema, props = obj.get("id"), obj.get("schema"), obj.get("properties")
        if not isinstance(ent_id, str) or not ent_id:
            raise ListFormatError(line, "missing entity id")
        if not isinstance(schema, str) or not schema:
            raise ListFormatError(line, "missing schema")
        if not isinstance(props, dict):
            raise ListFormatError(line, "properties must be an object")
        changed = obj.get("last_change")
        if isinstance(changed, str) and len(changed) >= 10:
            try:
                day = date.fromisoformat(changed[:10])
            except ValueError as exc:
                raise ListFormatError(line, f"last_change {changed!r} is not a date") from exc
            out.latest_change = max(out.latest_change or day, day)
        if schema == "CryptoWallet":
            keys = _strings(props, "publicKey", line)
            if not keys:
                raise ListFormatError(line, "CryptoWallet without publicKey")
            wallets.append(
                (
                    ent_id,
                    keys,
                    _strings(props, "currency", line),
                    _refs(props, "holder", line),
                )
            )
            continue
        if schema not in _FTM_PARTIES:
            out.skipped += 1  # addresses, sanctions, ownerships... not screened by name
            continue
        if ent_id in parties:
            raise ListFormatError(line, f"entity {ent_id} appears twice")
        names = _strings(props, "name", line)
        if not names:
            raise ListFormatError(line, f"{schema} {ent_id} has no name")
        entity = ParsedEntity(
            source_id=ent_id,
            schema=schema,
            names=[(names[0], "primary"), *((n, "name") for n in names[1:])],
            programs=_strings(props, "program", line),
            remarks="; ".join(_strings(props, "notes", line)) or None,
            data={"datasets": obj.get("datasets", []), "topics": props.get("topics", [])},
        )
        for key in _FTM_ALIASES:
            entity.names.extend((n, key) for n in _strings(props, key, line))
        parties[ent_id] = entity
    for wallet_id, keys, currencies, holders in wallets:
        currency = (currencies[0] if currencies else "UNKNOWN").upper()
        owners = [parties[h] for h in holders if h in parties]
        if not owners:
            # a wallet whose holder is not in this file is still a listed address
            owner = ParsedEntity(source_id=wallet_id, schema="CryptoWallet")
            parties[wallet_id] = owner
            owners = [owner]
        for owner in owners:
            owner.crypto.extend((currency, key) for key in keys)
    out.entities = list(parties.values())
    return out


def parse(fmt: str, lines: Iterable[str]) -> ParsedFile:
    if fmt == "ofac-sdn":
        return parse_sdn(lines)
    if fmt == "ofac-alt":
        return parse_alt(lines)
    if fmt == "ofac-add":
        return parse_add(lines)
    if fmt == "ftm":
        return parse_ftm(lines)
    raise ListFormatError(0, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
