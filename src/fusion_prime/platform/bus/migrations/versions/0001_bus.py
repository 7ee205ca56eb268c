"""bus database: topics, subscriptions, per-subscription messages, dead letters

Revision ID: 0001
Revises:

One message row per (subscription, event): the fan-out happens when the broker accepts
an event, so every subscription owns its own delivery state (lease, attempts, back-off,
ack) and FOR UPDATE SKIP LOCKED works on plain rows. See docs/events.md.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bus_topics",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "bus_subscriptions",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("topic", sa.Text(), sa.ForeignKey("bus_topics.name"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="5"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("max_attempts >= 1", name="ck_bus_subscriptions_max_attempts"),
    )
    op.create_index("ix_bus_subscriptions_topic", "bus_subscriptions", ["topic"])
    op.create_table(
        "bus_messages",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "subscription",
            sa.Text(),
            sa.ForeignKey("bus_subscriptions.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("envelope", pg.JSONB(), nullable=False),
        # deliveries so far (incremented when leased, like Pub/Sub's deliveryAttempt)
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column(
            "available_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("lease_token", pg.UUID(as_uuid=True)),
        sa.Column("last_error", sa.Text()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("acked_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("subscription", "event_id", name="uq_bus_messages_subscription_event"),
    )
    op.create_index(
        "ix_bus_messages_pending",
        "bus_messages",
        ["subscription", "id"],
        postgresql_where=sa.text("acked_at IS NULL"),
    )
    op.create_index(
        "ix_bus_messages_subject",
        "bus_messages",
        ["subscription", "subject", "id"],
        postgresql_where=sa.text("acked_at IS NULL"),
    )
    # messages delivered at least once and not acked: in flight or backing off (small)
    op.create_index(
        "ix_bus_messages_inflight",
        "bus_messages",
        ["subscription", "subject"],
        postgresql_where=sa.text("acked_at IS NULL AND attempts > 0"),
    )
    op.create_index(
        "ix_bus_messages_acked",
        "bus_messages",
        ["acked_at"],
        postgresql_where=sa.text("acked_at IS NOT NULL"),
    )
    # a busy queue table: keep its statistics fresh so plans stay index-driven
    op.execute(
        "ALTER TABLE bus_messages SET (autovacuum_vacuum_scale_factor = 0.02, "
        "autovacuum_analyze_scale_factor = 0.02)"
    )
    op.create_table(
        "bus_dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("subscription", sa.Text(), nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("envelope", pg.JSONB(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "dead_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_bus_dead_letters_subscription", "bus_dead_letters", ["subscription"])


def downgrade() -> None:
    op.drop_table("bus_dead_letters")
    op.drop_table("bus_messages")
    op.drop_table("bus_subscriptions")
    op.drop_table("bus_topics")
