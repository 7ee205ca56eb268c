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


def create_auth_tables() -> None:
    """The service's API keys (platform/auth.py): each service database has its own."""
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.CheckConstraint("key_id ~ '^[0-9a-f]{12}$'", name="ck_api_keys_key_id"),
        sa.CheckConstraint(
            "role IN ('viewer', 'operator', 'compliance_officer', 'risk_manager', 'admin')",
            name="ck_api_keys_role",
        ),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name="ck_api_keys_name"),
    )


def drop_auth_tables() -> None:
    op.drop_table("api_keys")
