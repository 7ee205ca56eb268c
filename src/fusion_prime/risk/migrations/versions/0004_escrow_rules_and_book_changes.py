"""risk: escrow approvals counted as settlement counts them; the change log of the book

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # issue 14 item 5: an escrow.approved event marked the escrow approved at once. The
    # status now follows settlement's own rule (settlement.domain.fold over the escrow's
    # events in chain order), so the events and what the rule needs are kept here
    op.add_column("escrows", sa.Column("arbiter", sa.Text()))
    op.add_column("escrows", sa.Column("approvals_required", sa.SmallInteger()))
    op.add_column(
        "escrows",
        sa.Column("approvers", pg.ARRAY(sa.Text()), nullable=False, server_default="{}"),
    )
    op.create_table(
        "escrow_events",
        sa.Column("chain_id", sa.BigInteger(), primary_key=True),
        sa.Column("address", sa.Text(), primary_key=True),
        sa.Column("block_number", sa.BigInteger(), primary_key=True),
        sa.Column("log_index", sa.Integer(), primary_key=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("data", pg.JSONB(), nullable=False),
        sa.Column("received_at", TS, nullable=False, server_default=sa.func.now()),
    )
    # what changed the inputs of the in-memory book outside a price tick (positions,
    # parameter and configuration versions, states written by another process): every
    # running instance applies the rows after the last one it has seen before it
    # evaluates, so the book in memory always matches the tables
    op.create_table(
        "book_changes",
        sa.Column("seq", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("account_ids", pg.ARRAY(sa.Text())),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("kind IN ('positions', 'states', 'params', 'config')"),
    )
    op.create_index("ix_book_changes_created", "book_changes", ["created_at"])


def downgrade() -> None:
    op.drop_table("book_changes")
    op.drop_table("escrow_events")
    op.drop_column("escrows", "approvers")
    op.drop_column("escrows", "approvals_required")
    op.drop_column("escrows", "arbiter")
