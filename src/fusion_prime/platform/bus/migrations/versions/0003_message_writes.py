"""bus messages: room for same-page updates

Revision ID: 0003
Revises: 0002

A message is written three times (published, leased, acked). Fillfactor 50 leaves room on
its page, so the lease's and the ack's new row versions stay there and their WAL records
carry only the changed bytes instead of the whole envelope again (a 20,000-event relayer
backfill: lease WAL 34 -> 13 MB, ack WAL 25 -> 8 MB).

`ix_bus_messages_subject` (subscription, subject, id), which no query reads any more,
stays: it is what refuses, at publish time, a subject too long for an index row (the
relay then dead-letters that outbox row); without it such a message would be accepted and
fail later in every lease, when `ix_bus_messages_inflight` first indexes it.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE bus_messages SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE bus_messages RESET (fillfactor)")
