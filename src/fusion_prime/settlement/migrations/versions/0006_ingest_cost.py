"""ingestion cost: the same address / hash checks, evaluated cheaply; room for HOT updates

Revision ID: 0006
Revises: 0005

Profiled during a relayer backfill (docs/settlement.md, bench section): PostgreSQL's
regular expressions with a bounded repeat (`^0x[0-9a-f]{40}$`) cost about 3.4 us per
evaluation, and every row an ingested event writes evaluates several of them (an escrow
upsert twelve: the proposed row's six, then the updated row's six). Each check becomes
`length(col) = N AND col ~ '^0x[0-9a-f]*$'`, about 0.4 us: it accepts exactly the same
values (`0x` followed by only lowercase hex digits, N characters in all, so exactly N - 2
digits; NULL passes as before) under the same constraint name.

`escrows` gets fillfactor 50: an event that changes no indexed column of its escrow (an
approval below the threshold) is then a HOT update on the same page (no new entry in the
table's six indexes), and the others stay on their page (smaller WAL records).
"""

from collections.abc import Callable

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ADDRESS = 42  # 0x + 40 hex digits
HASH = 66  # 0x + 64 hex digits

# (table, column, length): every `^0x[0-9a-f]{40|64}$` check of 0001 and 0003
CHECKS = (
    ("assets", "address", ADDRESS),
    ("escrows", "address", ADDRESS),
    ("escrows", "payer", ADDRESS),
    ("escrows", "payee", ADDRESS),
    ("escrows", "arbiter", ADDRESS),
    ("escrows", "asset_address", ADDRESS),
    ("escrows", "deployed_tx_hash", HASH),
    ("escrow_approvals", "approver", ADDRESS),
    ("chain_events", "tx_hash", HASH),
    ("chain_events", "escrow_address", ADDRESS),
    ("commands", "escrow_address", ADDRESS),
    ("commands", "payer", ADDRESS),
    ("commands", "payee", ADDRESS),
    ("commands", "arbiter", ADDRESS),
    ("commands", "asset_address", ADDRESS),
    ("commands", "approver", ADDRESS),
    ("commands", "new_arbiter", ADDRESS),
    ("relayer_checkpoints", "block_hash", HASH),
    ("relayer_blocks", "block_hash", HASH),
    ("relayer_logs", "tx_hash", HASH),
    ("relayer_logs", "block_hash", HASH),
)


def cheap(column: str, length: int) -> str:
    return f"length({column}) = {length} AND {column} ~ '^0x[0-9a-f]*$'"


def bounded(column: str, length: int) -> str:
    return f"{column} ~ '^0x[0-9a-f]{{{length - 2}}}$'"


def _replace(expression: Callable[[str, int], str]) -> None:
    tables: dict[str, list[str]] = {}
    for table, column, length in CHECKS:
        name = f"{table}_{column}_check"
        tables.setdefault(table, []).extend(
            [
                f"DROP CONSTRAINT {name}",
                f"ADD CONSTRAINT {name} CHECK ({expression(column, length)})",
            ]
        )
    for table, actions in tables.items():
        # one ALTER per table: its new checks are validated in one pass
        op.execute(f"ALTER TABLE {table} " + ", ".join(actions))


def upgrade() -> None:
    _replace(cheap)
    op.execute("ALTER TABLE escrows SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE escrows RESET (fillfactor)")
    _replace(bounded)
