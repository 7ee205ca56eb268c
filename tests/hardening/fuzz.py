"""OpenAPI-driven request generation for the API fuzz tests (no schemathesis needed).

Every route, method, path/query/header parameter and JSON body schema comes from the
app's own `app.openapi()`, so a new endpoint is fuzzed without touching these tests.
Values mix schema-shaped data (to get past validation into the handlers and the
database) with hostile data: wrong types, huge and negative numbers, NaN/Infinity
spellings, unicode, empty strings, missing and extra fields, non-JSON bodies and wrong
content types.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import strategies as st

PROBLEM_JSON = "application/problem+json"

# values that have broken parsers before: huge/negative/float/exponent numbers, the
# special float spellings, NUL and other control characters, RTL and astral unicode
NASTY_STRINGS = [
    "",
    " ",
    "0",
    "-1",
    "1e400",
    "-1e-400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1" * 100,
    "99999999999999999999999999999999999999999999999999999999999999999999999999999999",
    "0x" + "ab" * 20,
    "0x" + "AB" * 20,
    "0X" + "0" * 40,
    "0x" + "g" * 40,
    "ETH",
    "USDC",
    "acct-1",
    "null",
    "true",
    "[]",
    "{}",
    "\x00",
    "a\x00b",
    "\u202eevil",
    "\U0001f4a9",
    "é" * 300,
    "x" * 5000,
    "../../etc/passwd",
    "%00",
    "' OR 1=1 --",
    "2026-12-01T07:00:00Z",
    "2026-12-01T07:00:00",
    "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00+00:00",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "https://example.invalid/hook",
    "http://127.0.0.1:1/x",
    "ftp://x",
]
NASTY_NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63),
    2**256,
    10**80,
    -(10**80),
    10**4000,
    0.5,
    -0.5,
    1e308,
    1e-320,
    3.0,
]


def nasty_value() -> st.SearchStrategy[Any]:
    """Anything JSON can carry, weighted towards known troublemakers."""
    leaf = st.one_of(
        st.sampled_from(NASTY_STRINGS),
        st.sampled_from(NASTY_NUMBERS),
        st.none(),
        st.booleans(),
        st.text(max_size=30),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
    )
    return st.recursive(
        leaf,
        lambda kids: (
            st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
        ),
        max_leaves=6,
    )


@dataclass
class Operation:
    method: str
    path: str
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    query_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    header_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    body_schema: dict[str, Any] | None = None
    body_required: bool = False

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


def operations(openapi: dict[str, Any]) -> list[Operation]:
    """Every (method, path) the app documents, with its parameters and JSON body schema."""
    ops: list[Operation] = []
    for path, item in sorted(openapi.get("paths", {}).items()):
        for method, spec in sorted(item.items()):
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            op = Operation(method.upper(), path)
            for param in spec.get("parameters", []):
                target = {
                    "path": op.path_params,
                    "query": op.query_params,
                    "header": op.header_params,
                }.get(param["in"])
                if target is not None:
                    target[param["name"]] = {
                        "schema": param.get("schema", {}),
                        "required": bool(param.get("required")),
                    }
            body = spec.get("requestBody")
            if body:
                op.body_schema = body.get("content", {}).get("application/json", {}).get("schema")
                op.body_required = bool(body.get("required"))
            ops.append(op)
    return ops


ADDRESS = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
# field names whose schema says only "string" but whose handlers want a specific shape:
# valid-looking values get the fuzzer past validation into the service and the database
NAME_HINTS: dict[str, st.SearchStrategy[Any]] = dict.fromkeys(
    (
        "address",
        "payer",
        "payee",
        "arbiter",
        "approver",
        "new_arbiter",
        "escrow_address",
        "addresses",
    ),
    ADDRESS,
)
NAME_HINTS["amount"] = st.integers(1, 10**30).map(str)
NAME_HINTS["asset"] = st.sampled_from(["ETH", "USDC", "WBTC"])


class SchemaStrategies:
    """JSON schema -> hypothesis strategies: valid values, and valid ones with one defect."""

    def __init__(self, openapi: dict[str, Any]) -> None:
        self.components = openapi.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def valid(
        self, schema: dict[str, Any], depth: int = 0, name: str = ""
    ) -> st.SearchStrategy[Any]:
        """A value the schema accepts (bounds, patterns, enums respected)."""
        schema = self.resolve(schema)
        if depth > 5:
            return st.none()
        if name in NAME_HINTS and schema.get("type") in (None, "string"):
            return NAME_HINTS[name]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self.valid(s, depth + 1, name) for s in schema[key]])
        if "allOf" in schema:
            return self.valid(schema["allOf"][0], depth + 1, name)
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            return self.object(schema, depth)
        if kind == "array":
            hint = NAME_HINTS.get(name)
            items = hint if hint is not None else self.valid(schema.get("items", {}), depth + 1)
            return st.lists(
                items,
                min_size=schema.get("minItems", 0),
                max_size=min(schema.get("maxItems", 3), 3),
                unique_by=lambda v: json.dumps(v, sort_keys=True),
            )
        if kind == "integer":
            lo, hi = schema.get("minimum"), schema.get("maximum")
            if "exclusiveMinimum" in schema:
                lo = int(schema["exclusiveMinimum"]) + 1
            if "exclusiveMaximum" in schema:
                hi = int(schema["exclusiveMaximum"]) - 1
            edges = [
                v
                for v in (lo, hi, 2**31, 2**63 - 1, 2**63, 10**40)
                if v is not None and (lo is None or v >= lo) and (hi is None or v <= hi)
            ]
            return st.integers(min_value=lo, max_value=hi) | st.sampled_from(edges)
        if kind == "number":
            lo = schema.get("minimum", schema.get("exclusiveMinimum"))
            hi = schema.get("maximum", schema.get("exclusiveMaximum"))
            plain = st.decimals(
                min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False, places=2
            ).map(str)
            return plain if hi is not None else plain | st.sampled_from(["1E+400", "1e30"])
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "string":
            fmt = schema.get("format")
            if fmt == "uuid":
                return st.uuids().map(str)
            if fmt == "uri":
                return st.sampled_from(["https://example.invalid/hook", "http://127.0.0.1:1/x"])
            if fmt == "date-time":  # valid ISO 8601, outside what the database stores
                edge = st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
                return edge | st.datetimes(
                    min_value=datetime(2020, 1, 1),
                    max_value=datetime(2026, 1, 1),
                    timezones=st.just(UTC),
                ).map(lambda d: d.isoformat())
            if schema.get("pattern"):
                return st.from_regex(schema["pattern"], fullmatch=True).filter(
                    lambda v: len(v) <= schema.get("maxLength", 200)
                )
            text = st.text(
                min_size=max(schema.get("minLength", 0), 1),
                max_size=min(schema.get("maxLength", 30), 30),
            ).filter(str.strip)
            # valid JSON strings PostgreSQL text cannot store (NUL) or that are long
            text = text | st.sampled_from(["a\x00b", "\x00"])
            if "maxLength" not in schema:  # unbounded: does the database agree?
                text = text | st.just("x" * 10_000) | st.just("\u00e9\U0001f4a9" * 2000)
            return text
        return nasty_value()

    def object(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy[dict[str, Any]]:
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            return {
                name: draw(self.valid(sub, depth + 1, name))
                for name, sub in props.items()
                if name in required or draw(st.booleans())
            }

        return build()

    def body(self, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        """Mostly a valid body; often one defect: a field wrong, missing or extra."""

        @st.composite
        def mutate(draw: st.DrawFn) -> Any:
            value = draw(self.valid(schema))
            if not isinstance(value, dict):
                return value
            defect = draw(st.sampled_from(["none", "wrong", "wrong", "missing", "extra"]))
            if defect == "wrong" and value:
                value[draw(st.sampled_from(sorted(value)))] = draw(nasty_value())
            elif defect == "missing" and value:
                del value[draw(st.sampled_from(sorted(value)))]
            elif defect == "extra":
                value[draw(st.text(min_size=1, max_size=10))] = draw(nasty_value())
            return value

        return mutate()

    def param(self, schema: dict[str, Any], name: str) -> st.SearchStrategy[str]:
        """A path/query value: valid for the schema, or hostile text."""
        return st.one_of(self.valid(schema, name=name), nasty_value(), st.just("a\x00b")).map(
            lambda v: v if isinstance(v, str) else json.dumps(v)
        )


HEADER_TEXT = st.text(alphabet=string.printable.strip() + " ", max_size=250)


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None

    def send(self, client: httpx.AsyncClient) -> Any:
        return client.request(self.method, self.url, headers=self.headers, content=self.content)


@st.composite
def requests(draw: st.DrawFn, ops: list[Operation], schemas: SchemaStrategies) -> Request:
    """One request to one documented operation, valid-looking or hostile."""
    op = draw(st.sampled_from(ops))
    path = op.path
    for name, param in op.path_params.items():
        value = draw(schemas.param(param["schema"], name))
        # never let a value turn into another route (empty segment, slashes, dots)
        path = path.replace("{" + name + "}", quote(value, safe="") or "%20")
    query: list[tuple[str, str]] = []
    for name, param in op.query_params.items():
        if draw(st.booleans()):
            query.append((name, draw(schemas.param(param["schema"], name))))
    if draw(st.integers(0, 9)) == 0:
        query.append((draw(st.text(min_size=1, max_size=8)), draw(st.text(max_size=8))))
    url = path
    if query:
        url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    headers: dict[str, str] = {}
    for name, param in op.header_params.items():
        if draw(st.integers(0, 3)) > 0 or param["required"]:
            if draw(st.integers(0, 9)) > 0:
                headers[name] = draw(HEADER_TEXT)
    content: bytes | None = None
    if op.method in {"POST", "PUT", "PATCH"}:
        kind = draw(st.integers(0, 9))
        if kind <= 5 and op.body_schema is not None:
            content = json.dumps(draw(schemas.body(op.body_schema))).encode()
            headers["content-type"] = "application/json"
        elif kind <= 6:
            content = json.dumps(draw(nasty_value())).encode()
            headers["content-type"] = "application/json"
        elif kind == 7:
            content = draw(st.binary(max_size=64))
            headers["content-type"] = draw(
                st.sampled_from(
                    ["application/json", "text/plain", "application/x-www-form-urlencoded"]
                )
            )
        elif kind == 8:
            content = b""
            headers["content-type"] = "application/json"
        else:
            content = None
        if content is not None and draw(st.integers(0, 9)) == 0:
            headers["content-type"] = "text/plain"
    return Request(op.method, url, headers, content)


def check_response(req: Request, response: httpx.Response) -> None:
    """The error contract of DESIGN.md: no 5xx, every 4xx problem+json naming what failed."""
    where = f"{req.method} {req.url[:300]} body={req.content[:300] if req.content else None!r}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:500]}"
    if response.status_code < 400:
        return
    ctype = response.headers.get("content-type", "")
    assert ctype.startswith(PROBLEM_JSON), f"{where} -> {response.status_code} {ctype}"
    body = response.json()
    assert body.get("status") == response.status_code, f"{where} -> {body}"
    assert isinstance(body.get("title"), str), f"{where} -> {body}"
    assert body["title"], f"{where} -> {body}"
    if response.status_code == 422:
        errors = body.get("errors")
        assert isinstance(errors, list), f"{where} -> 422 without errors: {body}"
        assert errors, f"{where} -> 422 names no field: {body}"
        for err in errors:
            # a field name, or "" when the client itself sent a key named ""
            assert isinstance(err.get("field"), str), f"{where} -> {body}"
            assert isinstance(err.get("message"), str), f"{where} -> {body}"
