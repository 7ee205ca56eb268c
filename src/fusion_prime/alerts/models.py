"""Table shapes for queries and readers (the schema itself comes from migrations/ only)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)
UUID = pg.UUID(as_uuid=True)

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("account_id", sa.Text),
    sa.Column("name", sa.Text),
    sa.Column("timezone", sa.Text),
    sa.Column("created_at", TS),
    sa.Column("deleted_at", TS),
)

contact_endpoints = sa.Table(
    "contact_endpoints",
    metadata,
    sa.Column("contact_id", UUID, primary_key=True),
    sa.Column("channel", sa.Text, primary_key=True),
    sa.Column("position", sa.SmallInteger),
    sa.Column("address", sa.Text),
    sa.Column("secret_ciphertext", sa.LargeBinary),
)

preferences = sa.Table(
    "preferences",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("kinds", pg.ARRAY(sa.Text)),
    sa.Column("channels", pg.ARRAY(sa.Text)),
    sa.Column("recipients", pg.ARRAY(UUID)),
    sa.Column("quiet_start", sa.Time),
    sa.Column("quiet_end", sa.Time),
    sa.Column("quiet_bypass", pg.ARRAY(sa.Text)),
    sa.Column("min_interval", pg.JSONB),
    sa.Column("dedupe_window_seconds", sa.Integer),
    sa.Column("updated_at", TS),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("account_id", sa.Text),
    sa.Column("event_type", sa.Text),
    sa.Column("kind", sa.Text),
    sa.Column("tier", sa.Text),
    sa.Column("from_tier", sa.Text),
    sa.Column("escalation", sa.Boolean),
    sa.Column("data", pg.JSONB),
    sa.Column("event_time", TS),
    sa.Column("received_at", TS),
    sa.Column("outcome", sa.Text),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("event_id", UUID),
    sa.Column("latest_event_id", UUID),
    sa.Column("account_id", sa.Text),
    sa.Column("kind", sa.Text),
    sa.Column("tier", sa.Text),
    sa.Column("contact_id", UUID),
    sa.Column("channel", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("folded_into", UUID),
    sa.Column("fold_count", sa.Integer),
    sa.Column("escalation", sa.Boolean),
    sa.Column("test", sa.Boolean),
    sa.Column("failover_of", UUID),
    sa.Column("payload", pg.JSONB),
    sa.Column("sent_event_id", UUID),
    sa.Column("attempts", sa.Integer),
    sa.Column("next_attempt_at", TS),
    sa.Column("retry_until", TS),
    sa.Column("last_error", sa.Text),
    sa.Column("provider_ref", sa.Text),
    sa.Column("created_at", TS),
    sa.Column("updated_at", TS),
    sa.Column("sent_at", TS),
    sa.Column("delivered_at", TS),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("notification_id", UUID),
    sa.Column("attempt", sa.Integer),
    sa.Column("channel", sa.Text),
    sa.Column("attempted_at", TS),
    sa.Column("latency_ms", sa.Integer),
    sa.Column("response_code", sa.Integer),
    sa.Column("response", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("outcome", sa.Text),
)
