"""escrows: the `disputed` status (the payer or payee contested an open escrow)

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE escrows DROP CONSTRAINT escrows_status_check")
    op.execute(
        "ALTER TABLE escrows ADD CONSTRAINT escrows_status_check CHECK (status IN "
        "('created', 'approved', 'disputed', 'released', 'refunded'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE escrows DROP CONSTRAINT escrows_status_check")
    op.execute(
        "ALTER TABLE escrows ADD CONSTRAINT escrows_status_check CHECK (status IN "
        "('created', 'approved', 'released', 'refunded'))"
    )
