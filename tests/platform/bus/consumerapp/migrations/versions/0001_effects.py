"""platform tables, outbox, inbox, effects and cures

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from fusion_prime.platform.bus.schema import create_inbox_table, create_outbox_table
from fusion_prime.platform.schema import create_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables()
    create_outbox_table()
    create_inbox_table()
    # deliberately no unique constraint: a double application must be countable
    op.create_table(
        "effects",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column(
            "applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table("cures", sa.Column("subject", sa.Text(), primary_key=True))


def downgrade() -> None:
    op.drop_table("cures")
    op.drop_table("effects")
