"""risk: partitions of the book leased to instances; who wrote each account state

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # accounts are split into RISK_PARTITIONS partitions (crc32 of the id); an instance
    # evaluates the accounts of the partitions it holds a live lease on (live.Leases)
    op.create_table(
        "risk_partition_leases",
        sa.Column("partition", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.Text()),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("renewed_at", sa.DateTime(timezone=True)),
    )
    # every running instance's heartbeat (renewed with its leases): a fair share counts
    # the instances alive, including those that hold no partition yet
    op.create_table(
        "risk_instances",
        sa.Column("instance", sa.Text(), primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    # the instance whose pass wrote the state (null: the SQL path or a CLI command)
    op.add_column("account_state", sa.Column("evaluated_by", sa.Text()))


def downgrade() -> None:
    op.drop_column("account_state", "evaluated_by")
    op.drop_table("risk_instances")
    op.drop_table("risk_partition_leases")
