"""Table shapes for queries (the schema itself comes from migrations/ only)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

risk_parameters = sa.Table(
    "risk_parameters",
    metadata,
    sa.Column("asset", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("ltv", sa.Numeric),
    sa.Column("liquidation_threshold", sa.Numeric),
    sa.Column("liquidation_bonus", sa.Numeric),
    sa.Column("max_price_age_seconds", sa.Integer),
    sa.Column("decimals", sa.SmallInteger),
    sa.Column("created_at", TS),
    sa.Column("created_by", sa.Text),
)

risk_config = sa.Table(
    "risk_config",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("healthy", sa.Numeric),
    sa.Column("warning", sa.Numeric),
    sa.Column("margin_call", sa.Numeric),
    sa.Column("hysteresis", sa.Numeric),
    sa.Column("reminder_interval_seconds", sa.Integer),
    sa.Column("snapshot_interval_seconds", sa.Integer),
    sa.Column("close_factor", sa.Numeric),
    sa.Column("full_close_below", sa.Numeric),
    sa.Column("max_future_skew_seconds", sa.Integer),
    sa.Column("created_at", TS),
    sa.Column("created_by", sa.Text),
)

price_rejections = sa.Table(
    "price_rejections",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("asset", sa.Text),
    sa.Column("source", sa.Text),
    sa.Column("source_time", TS),
    sa.Column("reason", sa.Text),
    sa.Column("data", pg.JSONB),
    sa.Column("received_at", TS),
)

prices = sa.Table(
    "prices",
    metadata,
    sa.Column("asset", sa.Text, primary_key=True),
    sa.Column("price", sa.Numeric),
    sa.Column("source", sa.Text),
    sa.Column("source_time", TS),
    sa.Column("event_id", pg.UUID(as_uuid=True)),
    sa.Column("updated_at", TS),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("created_at", TS),
    sa.Column("updated_at", TS),
)

positions = sa.Table(
    "positions",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("asset", sa.Text, primary_key=True),
    sa.Column("collateral", sa.Numeric(78, 0)),
    sa.Column("debt", sa.Numeric(78, 0)),
    sa.Column("decimals", sa.SmallInteger),
)

account_state = sa.Table(
    "account_state",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text),
    sa.Column("known_tier", sa.Text),
    sa.Column("factor", sa.Numeric),
    sa.Column("last_event_at", TS),
    sa.Column("last_snapshot_at", TS),
    sa.Column("evaluated_at", TS),
)

health_snapshots = sa.Table(
    "health_snapshots",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("account_id", sa.Text),
    sa.Column("taken_at", TS),
    sa.Column("reason", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("factor", sa.Numeric),
    sa.Column("collateral_value", sa.Numeric),
    sa.Column("weighted_collateral", sa.Numeric),
    sa.Column("debt_value", sa.Numeric),
    sa.Column("borrow_capacity", sa.Numeric),
    sa.Column("prices", pg.JSONB),
)

margin_events = sa.Table(
    "margin_events",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("account_id", sa.Text),
    sa.Column("event_type", sa.Text),
    sa.Column("from_tier", sa.Text),
    sa.Column("to_tier", sa.Text),
    sa.Column("factor", sa.Numeric),
    sa.Column("collateral_value", sa.Numeric),
    sa.Column("weighted_collateral", sa.Numeric),
    sa.Column("debt_value", sa.Numeric),
    sa.Column("borrow_capacity", sa.Numeric),
    sa.Column("max_repay_value", sa.Numeric),
    sa.Column("prices", pg.JSONB),
    sa.Column("created_at", TS),
)

escrows = sa.Table(
    "escrows",
    metadata,
    sa.Column("chain_id", sa.BigInteger, primary_key=True),
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column("payer", sa.Text),
    sa.Column("payee", sa.Text),
    sa.Column("asset", sa.Text),
    sa.Column("amount", sa.Numeric(78, 0)),
    sa.Column("decimals", sa.SmallInteger),
    sa.Column("status", sa.Text),
    sa.Column("last_block", sa.BigInteger),
    sa.Column("last_log_index", sa.Integer),
    sa.Column("updated_at", TS),
)
