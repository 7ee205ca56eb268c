"""oracle schema: versioned feeds, feed state, observations, aggregates, hourly OHLC, health

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from fusion_prime.platform.bus.schema import create_outbox_table
from fusion_prime.platform.schema import create_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
OBSERVATION_STATUS = "('used','outlier','stale','error')"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    create_platform_tables()
    create_outbox_table()
    op.create_table(
        "feeds",
        sa.Column("pair", sa.Text(), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("sources", pg.JSONB(), nullable=False),
        sa.Column("heartbeat_seconds", sa.Integer(), nullable=False),
        sa.Column("deviation", sa.Numeric(), nullable=False),
        sa.Column("max_source_age_seconds", sa.Integer(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("outlier_band", sa.Numeric(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.CheckConstraint("version >= 1"),
        sa.CheckConstraint("heartbeat_seconds > 0 AND max_source_age_seconds > 0"),
        sa.CheckConstraint("quorum >= 1"),
        sa.CheckConstraint("deviation > 0 AND deviation < 1"),
        sa.CheckConstraint("outlier_band > 0 AND outlier_band < 1"),
    )
    op.create_table(
        "feed_state",
        sa.Column("pair", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("status_since", TS, nullable=False),
        sa.Column("last_round_at", TS, nullable=False),
        sa.Column("last_price", sa.Numeric()),
        sa.Column("last_published_price", sa.Numeric()),
        sa.Column("last_published_at", TS),
        sa.CheckConstraint("status IN ('ok','degraded')"),
    )
    op.create_table(
        "observations",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("pair", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("value", sa.Numeric()),
        sa.Column("source_time", TS),
        sa.Column("observed_at", TS, nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.CheckConstraint(f"status IN {OBSERVATION_STATUS}"),
        sa.CheckConstraint("value IS NULL OR value > 0"),
    )
    op.create_index("ix_observations_observed_at", "observations", ["observed_at"])
    op.create_index("ix_observations_pair", "observations", ["pair", "observed_at"])
    op.create_table(
        "aggregates",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("pair", sa.Text(), nullable=False),
        sa.Column("price", sa.Numeric(), nullable=False),
        sa.Column("observed_at", TS, nullable=False),
        sa.Column("sources", pg.JSONB(), nullable=False),
        sa.Column("spread", sa.Numeric(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("publish_reason", sa.Text()),
        sa.Column("event_id", pg.UUID(as_uuid=True)),
        sa.CheckConstraint("price > 0 AND spread >= 0"),
    )
    op.create_index(
        "ix_aggregates_pair_time",
        "aggregates",
        ["pair", "observed_at"],
        postgresql_include=["price"],
    )
    # OHLC per hour, kept in the transaction that stores each aggregate: a year of history
    # is 8,760 rows per pair instead of a million 30-second aggregates
    op.create_table(
        "aggregate_hours",
        sa.Column("pair", sa.Text(), primary_key=True),
        sa.Column("bucket", TS, primary_key=True),
        sa.Column("open", sa.Numeric(), nullable=False),
        sa.Column("high", sa.Numeric(), nullable=False),
        sa.Column("low", sa.Numeric(), nullable=False),
        sa.Column("close", sa.Numeric(), nullable=False),
        sa.Column("first_at", TS, nullable=False),
        sa.Column("last_at", TS, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    op.create_table(
        "source_health",
        sa.Column("source", sa.Text(), primary_key=True),
        sa.Column("successes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failures", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_success_at", TS),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_error_at", TS),
        sa.Column("last_latency_ms", sa.Integer()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
    )


def downgrade() -> None:
    for table in (
        "source_health",
        "aggregate_hours",
        "aggregates",
        "observations",
        "feed_state",
        "feeds",
        "outbox",
    ):
        op.drop_table(table)
    from fusion_prime.platform.schema import drop_platform_tables

    drop_platform_tables()
