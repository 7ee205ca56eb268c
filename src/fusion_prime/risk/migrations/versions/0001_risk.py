"""risk engine schema: parameters, config, prices, accounts, positions, state, history

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

TS = sa.DateTime(timezone=True)
UNITS = sa.Numeric(78, 0)
TIERS = "('healthy','warning','margin_call','liquidation','unknown_price')"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    create_platform_tables()
    create_outbox_table()
    create_inbox_table()
    op.create_table(
        "risk_parameters",
        sa.Column("asset", sa.Text(), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("ltv", sa.Numeric(), nullable=False),
        sa.Column("liquidation_threshold", sa.Numeric(), nullable=False),
        sa.Column("liquidation_bonus", sa.Numeric(), nullable=False),
        sa.Column("max_price_age_seconds", sa.Integer(), nullable=False),
        sa.Column("decimals", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.CheckConstraint("version >= 1"),
        sa.CheckConstraint("decimals BETWEEN 0 AND 36"),
        sa.CheckConstraint(
            "0 <= ltv AND ltv <= liquidation_threshold AND liquidation_threshold <= 1"
        ),
        sa.CheckConstraint("liquidation_bonus >= 0 AND liquidation_bonus <= 1"),
        sa.CheckConstraint("max_price_age_seconds > 0"),
    )
    op.create_table(
        "risk_config",
        sa.Column("version", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("healthy", sa.Numeric(), nullable=False),
        sa.Column("warning", sa.Numeric(), nullable=False),
        sa.Column("margin_call", sa.Numeric(), nullable=False),
        sa.Column("hysteresis", sa.Numeric(), nullable=False),
        sa.Column("reminder_interval_seconds", sa.Integer(), nullable=False),
        sa.Column("snapshot_interval_seconds", sa.Integer(), nullable=False),
        sa.Column("close_factor", sa.Numeric(), nullable=False),
        sa.Column("full_close_below", sa.Numeric(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.CheckConstraint("healthy > warning AND warning > margin_call AND margin_call > 0"),
        sa.CheckConstraint("hysteresis >= 0"),
        sa.CheckConstraint("reminder_interval_seconds > 0 AND snapshot_interval_seconds > 0"),
    )
    op.execute(
        "INSERT INTO risk_config (healthy, warning, margin_call, hysteresis, "
        "reminder_interval_seconds, snapshot_interval_seconds, close_factor, full_close_below) "
        "VALUES (1.25, 1.10, 1.00, 0.02, 3600, 21600, 0.5, 0.95)"
    )
    op.create_table(
        "prices",
        sa.Column("asset", sa.Text(), primary_key=True),
        sa.Column("price", sa.Numeric(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_time", TS, nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.CheckConstraint("price > 0"),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
    )
    op.create_table(
        "positions",
        sa.Column("account_id", sa.Text(), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("asset", sa.Text(), primary_key=True),
        sa.Column("collateral", UNITS, nullable=False),
        sa.Column("debt", UNITS, nullable=False),
        sa.Column("decimals", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint("collateral >= 0 AND debt >= 0 AND (collateral > 0 OR debt > 0)"),
        sa.CheckConstraint("decimals BETWEEN 0 AND 36"),
    )
    op.create_index("ix_positions_asset", "positions", ["asset", "account_id"])
    # No foreign key to accounts here (nor on snapshots/events): these rows are written in
    # bulk only by the evaluator, for accounts it just read, and a per-row RI check doubled
    # the cost of persisting a pass.
    op.create_table(
        "account_state",
        sa.Column("account_id", sa.Text(), primary_key=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("known_tier", sa.Text()),
        sa.Column("factor", sa.Numeric()),
        sa.Column("last_event_at", TS),
        sa.Column("last_snapshot_at", TS),
        sa.Column("evaluated_at", TS, nullable=False),
        sa.CheckConstraint(f"status IN {TIERS}"),
    )
    op.create_table(
        "health_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("taken_at", TS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("factor", sa.Numeric()),
        sa.Column("collateral_value", sa.Numeric(), nullable=False),
        sa.Column("weighted_collateral", sa.Numeric(), nullable=False),
        sa.Column("debt_value", sa.Numeric(), nullable=False),
        sa.Column("borrow_capacity", sa.Numeric(), nullable=False),
        sa.Column("prices", pg.JSONB(), nullable=False),
        sa.CheckConstraint("reason IN ('tier_change','periodic')"),
    )
    op.create_index("ix_snapshots_account", "health_snapshots", ["account_id", "taken_at"])
    op.create_table(
        "margin_events",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("from_tier", sa.Text()),
        sa.Column("to_tier", sa.Text(), nullable=False),
        sa.Column("factor", sa.Numeric()),
        sa.Column("collateral_value", sa.Numeric(), nullable=False),
        sa.Column("weighted_collateral", sa.Numeric(), nullable=False),
        sa.Column("debt_value", sa.Numeric(), nullable=False),
        sa.Column("borrow_capacity", sa.Numeric(), nullable=False),
        sa.Column("max_repay_value", sa.Numeric(), nullable=False),
        # prices used; the full payload (seizures, missing assets...) is the outbox envelope
        sa.Column("prices", pg.JSONB(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_margin_events_account", "margin_events", ["account_id", "created_at"])
    op.create_index("ix_margin_events_tier", "margin_events", ["to_tier", "created_at"])
    op.create_index("ix_margin_events_created", "margin_events", ["created_at"])
    op.create_table(
        "escrows",
        sa.Column("chain_id", sa.BigInteger(), primary_key=True),
        sa.Column("address", sa.Text(), primary_key=True),
        sa.Column("payer", sa.Text()),
        sa.Column("payee", sa.Text()),
        sa.Column("asset", sa.Text()),
        sa.Column("amount", UNITS),
        sa.Column("decimals", sa.SmallInteger()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("last_block", sa.BigInteger(), nullable=False),
        sa.Column("last_log_index", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.CheckConstraint("status IN ('open','approved','released','refunded')"),
    )
    op.create_index("ix_escrows_payer", "escrows", ["payer"])
    op.create_index("ix_escrows_payee", "escrows", ["payee"])


def downgrade() -> None:
    for table in (
        "escrows",
        "margin_events",
        "health_snapshots",
        "account_state",
        "positions",
        "accounts",
        "prices",
        "risk_config",
        "risk_parameters",
        "inbox",
        "outbox",
    ):
        op.drop_table(table)
    from fusion_prime.platform.schema import drop_platform_tables

    drop_platform_tables()
