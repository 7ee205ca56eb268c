"""auth: the service's API keys (actors come from them)

Revision ID: 0003
Revises: 0002
"""

from fusion_prime.platform.schema import create_auth_tables, drop_auth_tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_auth_tables()


def downgrade() -> None:
    drop_auth_tables()
