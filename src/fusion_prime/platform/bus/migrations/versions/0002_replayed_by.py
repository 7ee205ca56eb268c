"""bus dead letters: who replayed them (issue 13, actors on record)

Revision ID: 0002
Revises: 0001

The HTTP replay route records the caller's identity (`name [key id]`); the command line,
which reaches the bus database directly, records the operating-system user.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("bus_dead_letters", sa.Column("replayed_by", sa.Text()))


def downgrade() -> None:
    op.drop_column("bus_dead_letters", "replayed_by")
