"""auth: the service's API keys; who made each feed version

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from fusion_prime.platform.schema import create_auth_tables, drop_auth_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_auth_tables()
    op.add_column("feeds", sa.Column("created_by", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("feeds", "created_by")
    drop_auth_tables()
