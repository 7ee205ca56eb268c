"""The OpenAPI document every service publishes, with its error answers as they really are.

FastAPI documents each route's 422 as `application/json` HTTPValidationError (`detail`)
and no other error; the services answer every error as application/problem+json
(platform/errors.py), also 404, 409, 401, 405, 413 and 415. A client generated from, or a
contract test run against, the plain document would be wrong about every error, so each
operation documents `4XX` and `422` as the Problem schema here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fusion_prime.platform.errors import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; 422 adds the failing fields in `errors`.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string", "minLength": 1},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}
_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": _REF}}
_UNUSED = ("HTTPValidationError", "ValidationError")


def problem_openapi(app: FastAPI) -> dict[str, Any]:
    """`app.openapi()` with every operation's error answers documented as problem+json."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "Validation failed", "content": _PROBLEM_CONTENT}
            responses.setdefault(
                "4XX", {"description": "Refused (problem details)", "content": _PROBLEM_CONTENT}
            )
    schemas["Problem"] = PROBLEM_SCHEMA
    text = repr(doc)
    for name in _UNUSED:
        if f"#/components/schemas/{name}'" not in text:
            schemas.pop(name, None)
    app.openapi_schema = doc
    return doc
