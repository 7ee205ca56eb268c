"""chain order (superseded history/anomalies), command correlation, confirmed_late,
case-insensitively unique asset symbols

Revision ID: 0002
Revises: 0001

- chain_events.correlation_id: the command id the signer echoed into the transaction;
  the index on (escrow_address, block_number, log_index) serves the re-fold.
- escrow_history / escrow_anomalies: a late event re-folds the escrow in chain order; the
  rows whose outcome changed are marked superseded (never rewritten or deleted) and the
  new outcome is appended. Uniqueness per chain event holds among current rows only, and
  the immutability trigger allows exactly that one change (setting superseded_at/by once).
- commands.status gains 'confirmed_late' (a failed command executed on chain after all).
- assets: one symbol per chain whatever its case. Existing case-insensitive duplicates
  stop the migration with their names (an operator decides which one stays).
"""

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SUPERSEDE_ONLY = """
CREATE FUNCTION settlement_supersede_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.superseded_at IS NULL AND NEW.superseded_at IS NOT NULL
        AND (to_jsonb(NEW) - 'superseded_at' - 'superseded_by')
            = (to_jsonb(OLD) - 'superseded_at' - 'superseded_by') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% rows are immutable (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$
"""


def upgrade() -> None:
    conn = op.get_bind()
    clashes = conn.execute(
        text(
            "SELECT chain_id, string_agg(symbol, ', ' ORDER BY symbol) AS symbols FROM assets "
            "GROUP BY chain_id, upper(symbol) HAVING count(*) > 1"
        )
    ).all()
    if clashes:
        listed = "; ".join(f"chain {c.chain_id}: {c.symbols}" for c in clashes)
        raise RuntimeError(
            "assets: symbols that differ only in case exist and must be resolved before "
            f"this migration (rename or remove one of each): {listed}"
        )
    op.execute("CREATE UNIQUE INDEX uq_assets_chain_symbol_ci ON assets (chain_id, upper(symbol))")

    op.execute("ALTER TABLE chain_events ADD COLUMN correlation_id uuid")
    op.execute(
        "CREATE INDEX ix_chain_events_escrow ON chain_events "
        "(escrow_address, block_number, log_index)"
    )

    op.execute(SUPERSEDE_ONLY)
    for table in ("escrow_history", "escrow_anomalies"):
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN superseded_at timestamptz, "
            "ADD COLUMN superseded_by bigint REFERENCES chain_events (id)"
        )
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_chain_event_id_key")
        op.execute(
            f"CREATE UNIQUE INDEX uq_{table}_current ON {table} (chain_event_id) "
            "WHERE superseded_at IS NULL"
        )
        op.execute(f"DROP TRIGGER {table}_immutable ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION settlement_supersede_only()"
        )

    op.execute("ALTER TABLE commands DROP CONSTRAINT commands_status_check")
    op.execute(
        "ALTER TABLE commands ADD CONSTRAINT commands_status_check CHECK (status IN "
        "('received', 'submitted', 'confirmed', 'confirmed_late', 'failed'))"
    )


def downgrade() -> None:
    op.execute("UPDATE commands SET status = 'confirmed' WHERE status = 'confirmed_late'")
    op.execute("ALTER TABLE commands DROP CONSTRAINT commands_status_check")
    op.execute(
        "ALTER TABLE commands ADD CONSTRAINT commands_status_check CHECK (status IN "
        "('received', 'submitted', 'confirmed', 'failed'))"
    )
    for table in ("escrow_history", "escrow_anomalies"):
        op.execute(f"DROP TRIGGER {table}_immutable ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION settlement_refuse_change()"
        )
        op.execute(f"DROP INDEX uq_{table}_current")
        # superseded rows have no place in the old schema (one row per chain event)
        op.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_immutable")
        op.execute(f"DELETE FROM {table} WHERE superseded_at IS NOT NULL")
        op.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_immutable")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {table}_chain_event_id_key UNIQUE (chain_event_id)"
        )
        op.execute(f"ALTER TABLE {table} DROP COLUMN superseded_at, DROP COLUMN superseded_by")
    op.execute("DROP FUNCTION settlement_supersede_only()")
    op.execute("DROP INDEX ix_chain_events_escrow")
    op.execute("ALTER TABLE chain_events DROP COLUMN correlation_id")
    op.execute("DROP INDEX uq_assets_chain_symbol_ci")
