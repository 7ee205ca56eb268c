"""alerts schema: contacts, preferences, events, notifications and their attempts

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from fusion_prime.platform.bus.schema import create_inbox_table
from fusion_prime.platform.schema import create_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
CHANNELS = "('email','webhook','slack','sms')"
STATUSES = "('pending','sent','delivered','failed','suppressed','no_recipient')"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    create_platform_tables()
    create_inbox_table()
    op.create_table(
        "contacts",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("deleted_at", TS),
    )
    op.create_index("ix_contacts_account", "contacts", ["account_id"])
    op.create_table(
        "contact_endpoints",
        sa.Column(
            "contact_id", pg.UUID(as_uuid=True), sa.ForeignKey("contacts.id"), primary_key=True
        ),
        sa.Column("channel", sa.Text(), primary_key=True),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        # email address, E.164 number, webhook URL; for Slack a masked URL (the real one
        # is a credential and lives only in secret_ciphertext)
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("secret_ciphertext", sa.LargeBinary()),
        sa.CheckConstraint(f"channel IN {CHANNELS}"),
        sa.UniqueConstraint("contact_id", "position"),
    )
    op.create_table(
        "preferences",
        sa.Column("account_id", sa.Text(), primary_key=True),
        sa.Column("kinds", pg.ARRAY(sa.Text()), nullable=False),
        sa.Column("channels", pg.ARRAY(sa.Text()), nullable=False),
        sa.Column("recipients", pg.ARRAY(pg.UUID(as_uuid=True))),
        sa.Column("quiet_start", sa.Time()),
        sa.Column("quiet_end", sa.Time()),
        sa.Column("quiet_bypass", pg.ARRAY(sa.Text()), nullable=False),
        sa.Column("min_interval", pg.JSONB(), nullable=False, server_default="{}"),
        sa.Column("dedupe_window_seconds", sa.Integer()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.CheckConstraint("(quiet_start IS NULL) = (quiet_end IS NULL)"),
    )
    op.create_table(
        "events",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text()),
        sa.Column("tier", sa.Text()),
        sa.Column("from_tier", sa.Text()),
        sa.Column("escalation", sa.Boolean(), nullable=False),
        sa.Column("data", pg.JSONB(), nullable=False),
        sa.Column("event_time", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False, server_default=_now()),
        # notified | not_alertable (e.g. a recovery to healthy)
        sa.Column("outcome", sa.Text(), nullable=False),
    )
    op.create_index("ix_events_account", "events", ["account_id", "received_at"])
    op.create_table(
        "notifications",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("event_id", pg.UUID(as_uuid=True), sa.ForeignKey("events.id")),
        sa.Column("latest_event_id", pg.UUID(as_uuid=True)),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("contact_id", pg.UUID(as_uuid=True), sa.ForeignKey("contacts.id")),
        sa.Column("channel", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("folded_into", pg.UUID(as_uuid=True)),
        sa.Column("fold_count", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("escalation", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("test", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("failover_of", pg.UUID(as_uuid=True)),
        # values to send: NULL for event-driven notifications (they send the data of
        # `latest_event_id`, so folded events refresh them); test messages carry their own
        sa.Column("payload", pg.JSONB()),
        sa.Column("sent_event_id", pg.UUID(as_uuid=True)),  # whose values were sent
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS),
        # retries stop here (created + ALERTS_RETRY_FOR; a manual retry moves it)
        sa.Column("retry_until", TS),
        sa.Column("last_error", sa.Text()),
        sa.Column("provider_ref", sa.Text()),
        sa.Column("created_at", TS, nullable=False, server_default=_now()),
        sa.Column("updated_at", TS, nullable=False, server_default=_now()),
        sa.Column("sent_at", TS),
        sa.Column("delivered_at", TS),
        sa.CheckConstraint(f"status IN {STATUSES}"),
        sa.CheckConstraint(f"channel IS NULL OR channel IN {CHANNELS}"),
        sa.CheckConstraint("status <> 'pending' OR next_attempt_at IS NOT NULL"),
    )
    op.create_index(
        "ix_notifications_due",
        "notifications",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_notifications_open",
        "notifications",
        ["account_id", "kind", "tier", "created_at"],
        postgresql_where=sa.text("status IN ('pending','sent','delivered')"),
    )
    op.create_index("ix_notifications_list", "notifications", ["created_at", "id"])
    op.create_index("ix_notifications_event", "notifications", ["event_id"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "notification_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey("notifications.id"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("attempted_at", TS, nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_code", sa.Integer()),  # HTTP status or SMTP reply code
        sa.Column("response", sa.Text()),  # SMTP reply text / provider message id
        sa.Column("error", sa.Text()),
        # accepted | retry | failed
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.UniqueConstraint("notification_id", "attempt"),
    )


def downgrade() -> None:
    for table in (
        "delivery_attempts",
        "notifications",
        "events",
        "preferences",
        "contact_endpoints",
        "contacts",
        "inbox",
    ):
        op.drop_table(table)
    from fusion_prime.platform.schema import drop_platform_tables

    drop_platform_tables()
