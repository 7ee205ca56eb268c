"""compliance schema: KYC, AML, sanctions, cases, hash-chained audit log

Revision ID: 0001
Revises:
"""

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from fusion_prime.platform.bus.schema import create_outbox_table
from fusion_prime.platform.schema import create_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen here (not imported from domain.py) so the seeded version never changes with code.
RULES_V1 = {
    "single_threshold": "10000",
    "daily_threshold": "10000",
    "business_timezone": "America/New_York",
    "structuring_min": "8000",
    "structuring_max": "10000",
    "structuring_count": 3,
    "structuring_window_hours": 24,
    "velocity_count": 5,
    "velocity_window_minutes": 10,
    "weights": {
        "single_threshold": 50,
        "daily_aggregate": 40,
        "structuring": 60,
        "velocity": 30,
        "sanctions": 100,
    },
    "medium_score": 40,
    "high_score": 70,
}


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else sa.func.now(),
    )


def upgrade() -> None:
    create_platform_tables()
    create_outbox_table()

    # -- cases (AML alerts and sanctions hits end up here) --------------------------
    op.create_table(
        "cases",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text()),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="open"),
        sa.Column("assignee", sa.Text()),
        sa.Column("resolution", sa.Text()),
        sa.Column("resolution_reason", sa.Text()),
        sa.Column("resolved_by", sa.Text()),
        _ts("resolved_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("kind IN ('aml', 'sanctions')", name="ck_cases_kind"),
        sa.CheckConstraint("status IN ('open', 'assigned', 'resolved')", name="ck_cases_status"),
        sa.CheckConstraint("level IN ('low', 'medium', 'high')", name="ck_cases_level"),
        sa.CheckConstraint(
            "(status = 'resolved') = (resolved_at IS NOT NULL AND resolution IS NOT NULL)",
            name="ck_cases_resolved",
        ),
    )
    op.create_index("ix_cases_user", "cases", ["user_id", "status"])
    op.create_index("ix_cases_status", "cases", ["status", "created_at"])

    # -- KYC ---------------------------------------------------------------------
    op.create_table(
        "kyc_cases",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text()),
        sa.Column("provider_inquiry_id", sa.Text(), unique=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'in_review', 'verified', 'rejected', 'needs_more_info')",
            name="ck_kyc_cases_status",
        ),
    )
    op.create_index("ix_kyc_cases_user", "kyc_cases", ["user_id", "created_at"])
    op.create_table(
        "kyc_documents",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("case_id", pg.UUID(as_uuid=True), sa.ForeignKey("kyc_cases.id"), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("issuing_country", sa.CHAR(2)),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("sha256", sa.CHAR(64)),
        sa.Column("mime_type", sa.Text()),
        _ts("created_at"),
        # references only: the images stay in the document store, never in this database
        sa.CheckConstraint(
            "reference !~* '^data:' AND length(reference) <= 2048", name="ck_kyc_documents_ref"
        ),
    )
    op.create_table(
        "kyc_status_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("case_id", pg.UUID(as_uuid=True), sa.ForeignKey("kyc_cases.id"), nullable=False),
        sa.Column("from_status", sa.Text()),
        sa.Column("to_status", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        _ts("at"),
    )
    op.create_index("ix_kyc_history_case", "kyc_status_history", ["case_id", "id"])
    op.create_table(
        "kyc_webhook_events",
        sa.Column("event_id", sa.Text(), primary_key=True),
        sa.Column("event_name", sa.Text(), nullable=False),
        sa.Column("inquiry_id", sa.Text()),
        sa.Column("case_id", pg.UUID(as_uuid=True), sa.ForeignKey("kyc_cases.id")),
        sa.Column("outcome", sa.Text(), nullable=False),
        _ts("signed_at"),
        _ts("received_at"),
        sa.Column("payload", pg.JSONB(), nullable=False),
    )

    # -- AML ---------------------------------------------------------------------
    op.create_table(
        "aml_rule_sets",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("rules", pg.JSONB(), nullable=False),
        sa.Column("published_by", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False, server_default=""),
        _ts("published_at"),
    )
    op.execute(
        sa.text(
            "INSERT INTO aml_rule_sets (version, rules, published_by, note) "
            "VALUES (1, CAST(:rules AS jsonb), 'migration 0001', 'initial thresholds')"
        ).bindparams(rules=json.dumps(RULES_V1))
    )
    op.create_table(
        "aml_transactions",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("external_id", sa.Text(), unique=True),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.Numeric(20, 2), nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False),
        sa.Column("tx_type", sa.Text(), nullable=False),
        sa.Column("counterparties", pg.JSONB(), nullable=False),
        sa.Column("addresses", pg.JSONB(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column(
            "rules_version",
            sa.Integer(),
            sa.ForeignKey("aml_rule_sets.version"),
            nullable=False,
        ),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("fired", pg.JSONB(), nullable=False),
        _ts("screened_at"),
        sa.CheckConstraint("amount > 0", name="ck_aml_tx_amount_positive"),
        sa.CheckConstraint("currency = 'USD'", name="ck_aml_tx_usd"),
    )
    op.create_index("ix_aml_tx_user_time", "aml_transactions", ["user_id", "occurred_at"])
    op.create_table(
        "aml_alerts",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "transaction_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey("aml_transactions.id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="open"),
        sa.Column("case_id", pg.UUID(as_uuid=True), sa.ForeignKey("cases.id"), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_aml_alerts_status"),
    )
    op.create_index("ix_aml_alerts_user", "aml_alerts", ["user_id", "status"])

    # -- sanctions ---------------------------------------------------------------
    op.create_table(
        "sanctions_list_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("list_name", sa.Text(), nullable=False),
        sa.Column("version_date", sa.Date(), nullable=False),
        _ts("created_at"),
        _ts("superseded_at", nullable=True),
    )
    op.create_index(
        "ux_sanctions_current_version",
        "sanctions_list_versions",
        ["list_name"],
        unique=True,
        postgresql_where=sa.text("superseded_at IS NULL"),
    )
    op.create_table(
        "sanctions_files",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "version_id",
            sa.BigInteger(),
            sa.ForeignKey("sanctions_list_versions.id"),
            nullable=False,
        ),
        sa.Column("format", sa.Text(), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("sha256", sa.CHAR(64), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        _ts("loaded_at"),
        sa.UniqueConstraint("version_id", "format", "sha256", name="uq_sanctions_files"),
    )
    op.create_table(
        "sanctions_entities",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "version_id",
            sa.BigInteger(),
            sa.ForeignKey("sanctions_list_versions.id"),
            nullable=False,
        ),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("schema", sa.Text(), nullable=False),
        sa.Column("primary_name", sa.Text()),
        sa.Column("programs", pg.JSONB(), nullable=False, server_default="[]"),
        sa.Column("remarks", sa.Text()),
        sa.Column("data", pg.JSONB(), nullable=False, server_default="{}"),
        sa.UniqueConstraint("version_id", "source_id", name="uq_sanctions_entities"),
    )
    op.create_table(
        "sanctions_names",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "entity_id", sa.BigInteger(), sa.ForeignKey("sanctions_entities.id"), nullable=False
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("normalised", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.UniqueConstraint("entity_id", "name", name="uq_sanctions_names"),
    )
    op.create_table(
        "sanctions_addresses",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "entity_id", sa.BigInteger(), sa.ForeignKey("sanctions_entities.id"), nullable=False
        ),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("normalised", sa.Text(), nullable=False),
        sa.UniqueConstraint("entity_id", "normalised", name="uq_sanctions_addresses"),
    )
    op.create_index("ix_sanctions_addresses_norm", "sanctions_addresses", ["normalised"])
    op.create_table(
        "sanctions_locations",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "entity_id", sa.BigInteger(), sa.ForeignKey("sanctions_entities.id"), nullable=False
        ),
        sa.Column("location_id", sa.Text(), nullable=False),
        sa.Column("address", sa.Text()),
        sa.Column("city", sa.Text()),
        sa.Column("country", sa.Text()),
        sa.Column("remarks", sa.Text()),
        sa.UniqueConstraint("entity_id", "location_id", name="uq_sanctions_locations"),
    )
    op.create_table(
        "sanctions_screenings",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("user_id", sa.Text()),
        sa.Column("names", pg.JSONB(), nullable=False),
        sa.Column("addresses", pg.JSONB(), nullable=False),
        sa.Column("threshold", sa.Numeric(4, 3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("candidates", pg.JSONB(), nullable=False),
        sa.Column("case_id", pg.UUID(as_uuid=True), sa.ForeignKey("cases.id")),
        _ts("created_at"),
        sa.CheckConstraint("status IN ('hit', 'clear')", name="ck_screenings_status"),
    )
    op.create_index("ix_screenings_user", "sanctions_screenings", ["user_id", "created_at"])

    # -- idempotent creation (Idempotency-Key header) ------------------------------
    op.create_table(
        "idempotency_keys",
        sa.Column("endpoint", sa.Text(), primary_key=True),
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("request_sha256", sa.CHAR(64), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response", pg.JSONB()),
        _ts("created_at"),
    )

    # -- audit trail -------------------------------------------------------------
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("payload", pg.JSONB(), nullable=False),
        sa.Column("prev_hash", sa.CHAR(64), nullable=False),
        sa.Column("hash", sa.CHAR(64), nullable=False, unique=True),
    )
    op.create_index("ix_audit_subject", "audit_log", ["subject", "seq"])
    # one row holding the chain head: appenders lock it (SELECT ... FOR UPDATE), which
    # serialises appends so two writers can never chain onto the same previous hash
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.CHAR(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_head_single"),
    )
    op.execute(
        "INSERT INTO audit_chain_head (id, last_seq, last_hash) VALUES (1, 0, repeat('0', 64))"
    )
    op.execute(
        """
        CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()"
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_log, audit_chain_head CASCADE")
    op.execute("DROP FUNCTION audit_log_refuse_change()")
    for table in (
        "idempotency_keys",
        "sanctions_screenings",
        "sanctions_locations",
        "sanctions_addresses",
        "sanctions_names",
        "sanctions_entities",
        "sanctions_files",
        "sanctions_list_versions",
        "aml_alerts",
        "aml_transactions",
        "aml_rule_sets",
        "kyc_webhook_events",
        "kyc_status_history",
        "kyc_documents",
        "kyc_cases",
        "cases",
        "outbox",
        "fp_heartbeat",
    ):
        op.drop_table(table)
