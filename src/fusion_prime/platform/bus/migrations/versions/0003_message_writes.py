"""bus messages: one index fewer per write, room for same-page updates

Revision ID: 0003
Revises: 0002

`ix_bus_messages_subject` (subscription, subject, id) served the first lease query (a
NOT EXISTS per candidate over earlier messages of its subject); the lease has since used
`ix_bus_messages_inflight` for the blocked subjects and `ix_bus_messages_pending` for the
candidates, and nothing else reads it (pg_stat_user_indexes over a relayer backfill: one
scan in 20,000 messages), yet every insert and every lease (a non-HOT update: it changes
`attempts`, which the partial indexes' predicates name) added an entry to it.

Fillfactor 50: a message is written three times (published, leased, acked); with room on
its page the lease's and the ack's new row versions stay there, so their WAL records
carry only the changed bytes instead of the whole envelope again.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX ix_bus_messages_subject")
    op.execute("ALTER TABLE bus_messages SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE bus_messages RESET (fillfactor)")
    op.execute(
        "CREATE INDEX ix_bus_messages_subject ON bus_messages (subscription, subject, id) "
        "WHERE acked_at IS NULL"
    )
