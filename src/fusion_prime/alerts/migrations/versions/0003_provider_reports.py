"""alerts: delivery reports that arrive before the notification is recorded as sent

A provider may confirm (or refuse) a message before the worker's transaction that records
its acceptance has committed; such a report is kept here and applied by that
transaction, instead of being lost.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_reports",
        sa.Column("channel", sa.Text(), primary_key=True),
        sa.Column("provider_ref", sa.Text(), primary_key=True),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )


def downgrade() -> None:
    op.drop_table("provider_reports")
