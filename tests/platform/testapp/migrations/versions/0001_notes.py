"""notes table, platform tables and the API keys

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from fusion_prime.platform.schema import create_auth_tables, create_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables()
    create_auth_tables()
    op.create_table(
        "notes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("notes")
