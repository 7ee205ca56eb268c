"""Hostile values and the error contract they must meet (shared by the hostile-input and
regression tests)."""

from __future__ import annotations

from typing import Any

import httpx

PROBLEM_JSON = "application/problem+json"

# strings that break naive SQL building, LIKE patterns, identifiers or the database's text
SQL_METACHARACTERS = [
    "' OR '1'='1",
    "'; DROP TABLE escrows; --",
    '" OR ""="',
    "%_%",
    "\\",
    "a'||pg_sleep(0)||'b",
    "$1",
    "); SELECT 1; --",
]
NUL = "nul\x00byte"


def check_problem(response: httpx.Response, where: str) -> None:
    """No 5xx; an error is application/problem+json with its status, a title, and for 422
    the failing fields (DESIGN.md)."""
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:500]}"
    if response.status_code < 400:
        return
    ctype = response.headers.get("content-type", "")
    assert ctype.startswith(PROBLEM_JSON), f"{where} -> {response.status_code} {ctype}"
    body: dict[str, Any] = response.json()
    assert body.get("status") == response.status_code, f"{where} -> {body}"
    assert isinstance(body.get("title"), str), f"{where} -> {body}"
    assert body["title"], f"{where} -> {body}"
    if response.status_code == 422:
        errors = body.get("errors")
        assert isinstance(errors, list), f"{where} -> 422 without errors: {body}"
        assert errors, f"{where} -> 422 names no field: {body}"
        for err in errors:
            assert isinstance(err.get("field"), str), f"{where} -> {body}"
            assert isinstance(err.get("message"), str), f"{where} -> {body}"
