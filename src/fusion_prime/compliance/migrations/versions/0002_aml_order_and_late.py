"""compliance: AML rules version 2 (rolling 24 h aggregate, late-report flag); re-scoring;
documents by hash (a KYC rejection follows the person)

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen here (not imported from domain.py) so the seeded version never changes with code.
RULES_V2 = {
    "single_threshold": "10000",
    "daily_threshold": "10000",
    "business_timezone": "America/New_York",
    "structuring_min": "8000",
    "structuring_max": "10000",
    "structuring_count": 3,
    "structuring_window_hours": 24,
    "velocity_count": 5,
    "velocity_window_minutes": 10,
    "aggregate_window_hours": 24,
    "late_report_hours": 72,
    "weights": {
        "single_threshold": 50,
        "daily_aggregate": 40,
        "structuring": 60,
        "velocity": 30,
        "sanctions": 100,
        "late_report": 40,
    },
    "medium_score": 40,
    "high_score": 70,
}


def upgrade() -> None:
    # a new version only if nobody published one yet; otherwise the operator's current
    # thresholds are kept and the two new keys take their defaults in the next version
    op.execute(
        sa.text(
            "INSERT INTO aml_rule_sets (version, rules, published_by, note) "
            "SELECT max(version) + 1, CAST(:rules AS jsonb), 'migration 0002', "
            "'rolling 24 h aggregate and late-report flag (issue 17)' FROM aml_rule_sets "
            "HAVING max(version) = 1"
        ).bindparams(rules=json.dumps(RULES_V2))
    )
    # when a later-arriving, earlier-dated transaction raised this one's score
    op.add_column(
        "aml_transactions", sa.Column("rescored_at", sa.DateTime(timezone=True), nullable=True)
    )
    # the compliance status looks up rejected cases that share a document hash
    op.create_index(
        "ix_kyc_documents_sha256",
        "kyc_documents",
        ["sha256"],
        postgresql_where=sa.text("sha256 IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_kyc_documents_sha256", "kyc_documents")
    op.drop_column("aml_transactions", "rescored_at")
    op.execute(
        "DELETE FROM aml_rule_sets s WHERE published_by = 'migration 0002' "
        "AND NOT EXISTS (SELECT 1 FROM aml_transactions t WHERE t.rules_version = s.version)"
    )
