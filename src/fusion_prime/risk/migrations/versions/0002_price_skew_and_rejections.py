"""risk: future-skew bound on price times, and the record of refused price events

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a price stamped further ahead of our clock than this is refused (issue 17): before,
    # it was stored and then never went stale, and it shadowed every real later price
    op.add_column(
        "risk_config",
        sa.Column("max_future_skew_seconds", sa.Integer(), nullable=False, server_default="60"),
    )
    op.create_check_constraint(
        "ck_risk_config_future_skew",
        "risk_config",
        "max_future_skew_seconds >= 0 AND max_future_skew_seconds <= 3600",
    )
    # price events that were refused: recorded and skipped (acknowledged), so one bad
    # event neither blocks the price stream nor is silently lost
    op.create_table(
        "price_rejections",
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("asset", sa.Text()),
        sa.Column("source", sa.Text()),
        sa.Column("source_time", sa.DateTime(timezone=True)),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("data", pg.JSONB(), nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_price_rejections_received", "price_rejections", ["received_at"])


def downgrade() -> None:
    op.drop_table("price_rejections")
    op.drop_constraint("ck_risk_config_future_skew", "risk_config")
    op.drop_column("risk_config", "max_future_skew_seconds")
