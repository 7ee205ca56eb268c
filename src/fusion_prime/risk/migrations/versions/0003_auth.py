"""auth: the service's API keys; who made each parameter and config version

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from fusion_prime.platform.schema import create_auth_tables, drop_auth_tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_auth_tables()
    op.add_column("risk_parameters", sa.Column("created_by", sa.Text(), nullable=True))
    op.add_column("risk_config", sa.Column("created_by", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("risk_parameters", "created_by")
    op.drop_column("risk_config", "created_by")
    drop_auth_tables()
