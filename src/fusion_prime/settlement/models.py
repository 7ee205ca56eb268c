"""SQLAlchemy Core tables for queries composed at run time (the escrow list's filters).

The schema itself comes only from the migrations; tests/settlement/test_models.py checks
these declarations against the migrated database so they cannot drift apart.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

escrows = sa.Table(
    "escrows",
    metadata,
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("chain_id", sa.BigInteger, nullable=False),
    sa.Column("payer", sa.Text, nullable=False),
    sa.Column("payee", sa.Text, nullable=False),
    sa.Column("arbiter", sa.Text, nullable=False),
    sa.Column("asset_address", sa.Text, nullable=False),
    sa.Column("asset_decimals", sa.SmallInteger, nullable=False),
    sa.Column("amount", sa.Numeric(78, 0), nullable=False),
    sa.Column("release_delay", sa.BigInteger, nullable=False),
    sa.Column("approvals_required", sa.SmallInteger, nullable=False),
    sa.Column("approvals_count", sa.SmallInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("deployed_block", sa.BigInteger, nullable=False),
    sa.Column("deployed_tx_hash", sa.Text, nullable=False),
    sa.Column("deployed_log_index", sa.Integer, nullable=False),
    sa.Column("last_block", sa.BigInteger, nullable=False),
    sa.Column("last_log_index", sa.Integer, nullable=False),
    sa.Column("last_tx_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("chain_id", sa.BigInteger, nullable=False),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("decimals", sa.SmallInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
