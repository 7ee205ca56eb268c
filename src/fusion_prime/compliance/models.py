"""Table descriptions used to build filtered queries. The schema itself comes only from the
migrations (never create_all); these mirror the columns the queries touch."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

cases = sa.Table(
    "cases",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("kind", sa.Text()),
    sa.Column("user_id", sa.Text()),
    sa.Column("level", sa.Text()),
    sa.Column("summary", sa.Text()),
    sa.Column("status", sa.Text()),
    sa.Column("assignee", sa.Text()),
    sa.Column("resolution", sa.Text()),
    sa.Column("resolution_reason", sa.Text()),
    sa.Column("resolved_by", sa.Text()),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger(), primary_key=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True)),
    sa.Column("kind", sa.Text()),
    sa.Column("subject", sa.Text()),
    sa.Column("actor", sa.Text()),
    sa.Column("payload", pg.JSONB()),
    sa.Column("prev_hash", sa.Text()),
    sa.Column("hash", sa.Text()),
)
