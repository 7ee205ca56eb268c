"""auth: the service's API keys; who requested each command

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from fusion_prime.platform.schema import create_auth_tables, drop_auth_tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_auth_tables()
    op.add_column("commands", sa.Column("requested_by", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("commands", "requested_by")
    drop_auth_tables()
