"""Business errors carry their HTTP status; one handler renders application/problem+json."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class DomainError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFoundError(DomainError):
    status = 404
    title = "Not found"


class ConflictError(DomainError):
    status = 409
    title = "Conflict"


class InvalidError(DomainError):
    """Input that parses but breaks a business rule; `field` names what to fix."""

    status = 422
    title = "Unprocessable entity"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        if field is not None:
            self.extra.setdefault("errors", [{"field": field, "message": detail}])


class UnauthorizedError(DomainError):
    status = 401
    title = "Unauthorized"


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


# SQLSTATEs that only a value the client sent can cause: a NUL or unencodable character,
# a number or date the column type cannot hold. Anything else stays a 500.
_VALUE_SQLSTATES = frozenset({"22021", "22P05", "22003", "22008"})


def _bad_value(exc: DBAPIError) -> bool:
    """Did the database refuse a request value (not the query, not the server)?"""
    import asyncpg

    orig = getattr(exc.orig, "__cause__", None) or exc.orig
    if isinstance(orig, asyncpg.DataError) and isinstance(
        orig.__cause__, (OverflowError, ValueError)
    ):
        return True  # asyncpg could not encode an argument: out of int64 / date range
    return getattr(orig, "sqlstate", None) in _VALUE_SQLSTATES


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        response = problem(exc.status, exc.title, exc.detail, **exc.extra)
        response.headers.update(getattr(exc, "headers", None) or {})  # WWW-Authenticate
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        fields = ", ".join(sorted({e["field"] for e in errors}))
        return problem(422, "Validation failed", f"invalid fields: {fields}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), None)

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        """Defence in depth: a value validation let through but PostgreSQL cannot store is
        the client's mistake (422), e.g. a NUL character in a string; never echo the SQL."""
        if not _bad_value(exc):
            raise exc  # a real fault: the generic handler answers 500 and it is logged
        message = "a value cannot be stored: NUL character, or a number or date out of range"
        return problem(
            422,
            "Unprocessable entity",
            message,
            errors=[{"field": "request", "message": message}],
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return problem(500, "Internal server error", "an unexpected error occurred")
