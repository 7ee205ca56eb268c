"""Tables every service database has, created by each service's first migration."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fusion_prime.platform.database import HEARTBEAT_TABLE


def create_platform_tables() -> None:
    op.create_table(
        HEARTBEAT_TABLE,
        sa.Column("service", sa.Text(), primary_key=True),
        sa.Column("instance", sa.Text(), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    )


def drop_platform_tables() -> None:
    op.drop_table(HEARTBEAT_TABLE)
