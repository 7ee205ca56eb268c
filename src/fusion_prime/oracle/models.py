"""Table shapes for queries (the schema itself comes from migrations/ only)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

feeds = sa.Table(
    "feeds",
    metadata,
    sa.Column("pair", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("sources", pg.JSONB),
    sa.Column("heartbeat_seconds", sa.Integer),
    sa.Column("deviation", sa.Numeric),
    sa.Column("max_source_age_seconds", sa.Integer),
    sa.Column("quorum", sa.Integer),
    sa.Column("outlier_band", sa.Numeric),
    sa.Column("enabled", sa.Boolean),
    sa.Column("created_at", TS),
    sa.Column("created_by", sa.Text),
)

feed_state = sa.Table(
    "feed_state",
    metadata,
    sa.Column("pair", sa.Text, primary_key=True),
    sa.Column("status", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("status_since", TS),
    sa.Column("last_round_at", TS),
    sa.Column("last_price", sa.Numeric),
    sa.Column("last_published_price", sa.Numeric),
    sa.Column("last_published_at", TS),
)

aggregates = sa.Table(
    "aggregates",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("pair", sa.Text),
    sa.Column("price", sa.Numeric),
    sa.Column("observed_at", TS),
    sa.Column("sources", pg.JSONB),
    sa.Column("spread", sa.Numeric),
    sa.Column("published", sa.Boolean),
    sa.Column("publish_reason", sa.Text),
    sa.Column("event_id", pg.UUID(as_uuid=True)),
)

source_health = sa.Table(
    "source_health",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("successes", sa.BigInteger),
    sa.Column("failures", sa.BigInteger),
    sa.Column("last_success_at", TS),
    sa.Column("last_error", sa.Text),
    sa.Column("last_error_at", TS),
    sa.Column("last_latency_ms", sa.Integer),
    sa.Column("updated_at", TS),
)
