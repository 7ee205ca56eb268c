"""A test-only service with one table, proving the platform before real services exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text

from fusion_prime.platform.auth import requires
from fusion_prime.platform.errors import NotFoundError
from fusion_prime.platform.runtime import Session
from fusion_prime.platform.spec import ServiceSpec

router = APIRouter()


class NoteIn(BaseModel):
    body: str = Field(min_length=1, max_length=1000)


@router.post("/notes", status_code=201, dependencies=requires("operator"))
async def create_note(note: NoteIn, session: Session) -> dict[str, Any]:
    row = (
        await session.execute(
            text("INSERT INTO notes (body) VALUES (:body) RETURNING id, body"), {"body": note.body}
        )
    ).one()
    return {"id": row.id, "body": row.body}


@router.get("/notes/{note_id}", dependencies=requires("viewer"))
async def get_note(note_id: int, session: Session) -> dict[str, Any]:
    row = (
        await session.execute(text("SELECT id, body FROM notes WHERE id = :id"), {"id": note_id})
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"note {note_id} does not exist")
    return {"id": row.id, "body": row.body}


SPEC = ServiceSpec(
    name="testapp",
    db_slug="testapp",
    default_port=8199,
    migrations_dir=Path(__file__).parent / "migrations",
    routers=lambda: [router],
    description="test-only app",
)
