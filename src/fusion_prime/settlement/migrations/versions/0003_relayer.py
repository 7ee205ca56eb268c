"""chain relayer: per-chain checkpoint, recent block hashes, published logs

Revision ID: 0003
Revises: 0002

Self-contained: only new tables, nothing of 0001/0002 is touched.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

HASH = "'^0x[0-9a-f]{64}$'"

STATEMENTS = (
    # One row per chain: the last block whose logs are published (block_number -1 before
    # the first one) and what the relayer last saw of the head, for lag reporting.
    f"""
    CREATE TABLE relayer_checkpoints (
        chain_id bigint PRIMARY KEY CHECK (chain_id > 0),
        contract_address text NOT NULL,
        block_number bigint NOT NULL CHECK (block_number >= -1),
        block_hash text CHECK (block_hash ~ {HASH}),
        block_time timestamptz,
        head_number bigint,
        head_time timestamptz,
        reorgs bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    # Hashes of processed blocks near the head (every block of the reorg window, the last
    # block of each backfill range): compared with the node's to find a common ancestor.
    f"""
    CREATE TABLE relayer_blocks (
        chain_id bigint NOT NULL REFERENCES relayer_checkpoints (chain_id),
        block_number bigint NOT NULL,
        block_hash text NOT NULL CHECK (block_hash ~ {HASH}),
        PRIMARY KEY (chain_id, block_number)
    )
    """,
    # Every log published, unique by its chain coordinates: a log is published at most
    # once per inclusion; a reorg deletes the rows of the removed blocks.
    f"""
    CREATE TABLE relayer_logs (
        chain_id bigint NOT NULL,
        tx_hash text NOT NULL CHECK (tx_hash ~ {HASH}),
        log_index integer NOT NULL CHECK (log_index >= 0),
        block_number bigint NOT NULL,
        block_hash text NOT NULL CHECK (block_hash ~ {HASH}),
        escrow_address text NOT NULL,
        event_type text NOT NULL,
        event_id uuid NOT NULL UNIQUE,
        published_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (chain_id, tx_hash, log_index)
    )
    """,
    "CREATE INDEX ix_relayer_logs_block ON relayer_logs (chain_id, block_number)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("relayer_logs", "relayer_blocks", "relayer_checkpoints"):
        op.execute(f"DROP TABLE {table}")
