"""auth: the service's API keys

Revision ID: 0002
Revises: 0001
"""

from fusion_prime.platform.schema import create_auth_tables, drop_auth_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_auth_tables()


def downgrade() -> None:
    drop_auth_tables()
