"""risk: counters of accounts per tier, accounts and accounts with positions, kept by triggers

Revision ID: 0006
Revises: 0005

GET /stats counted a million rows three times per request (0.5-0.7 s). The counts are now
kept in `risk_counters` by statement-level triggers with transition tables (one
aggregate per statement, not per row) on account_state, accounts and positions, and
/stats sums at most SLOTS rows per counter.

Slots: every writing transaction adds its deltas to a slot of its own, claimed with a
transaction-level advisory lock (tried from pg_backend_pid() % SLOTS upwards), so
concurrent writers (instances persisting their own partitions, the API, the CLI) never
wait on one another's counter rows and cannot deadlock on them. A counter's value is the
sum over the slots. Exact under concurrency: transition tables hold the row versions a
statement really inserted, updated or deleted (INSERT ... ON CONFLICT DO UPDATE fires
the INSERT trigger for the rows inserted and the UPDATE trigger for the rows updated).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SLOTS = 64
# pg_advisory_xact_lock(class, slot): the class says "risk counter slot"
LOCK_CLASS = 0x52534B43

SLOT_FUNCTION = f"""
CREATE FUNCTION risk_counter_slot() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  first int := pg_backend_pid() % {SLOTS};
  s int;
BEGIN
  FOR i IN 0..{SLOTS - 1} LOOP
    s := (first + i) % {SLOTS};
    IF pg_try_advisory_xact_lock({LOCK_CLASS}, s) THEN
      RETURN s;
    END IF;
  END LOOP;
  -- more than {SLOTS} writers at once: wait for this backend's own slot
  PERFORM pg_advisory_xact_lock({LOCK_CLASS}, first);
  RETURN first;
END $$
"""

# the deltas of one statement: (counter, delta) rows, added to this transaction's slot
ADD = """
  INSERT INTO risk_counters (slot, counter, n)
  SELECT risk_counter_slot(), d.counter, d.n FROM ({deltas}) d WHERE d.n <> 0
  ORDER BY d.counter
  ON CONFLICT (slot, counter) DO UPDATE SET n = risk_counters.n + EXCLUDED.n
"""

TIER_DELTAS = {
    "INSERT": "SELECT 'tier:' || status AS counter, count(*) AS n FROM new_rows GROUP BY status",
    "UPDATE": (
        "SELECT 'tier:' || status AS counter, sum(d) AS n FROM ("
        "SELECT status, 1 AS d FROM new_rows UNION ALL SELECT status, -1 FROM old_rows"
        ") x GROUP BY status"
    ),
    "DELETE": "SELECT 'tier:' || status AS counter, -count(*) AS n FROM old_rows GROUP BY status",
}
ACCOUNT_DELTAS = {
    "INSERT": "SELECT 'accounts' AS counter, count(*) AS n FROM new_rows",
    "DELETE": "SELECT 'accounts' AS counter, -count(*) AS n FROM old_rows",
}
# an account counts while it has at least one position: before the statement it had
# (rows now) - (rows the statement added) + (rows it removed)
POSITION_DELTAS = """
SELECT 'accounts_with_positions' AS counter,
       sum((now_n > 0)::int - (now_n - added + removed > 0)::int) AS n
FROM (
  SELECT c.account_id, sum(c.added) AS added, sum(c.removed) AS removed,
         (SELECT count(*) FROM positions p WHERE p.account_id = c.account_id) AS now_n
  FROM ({changed}) c GROUP BY c.account_id
) per
"""
POSITION_CHANGED = {
    "INSERT": "SELECT account_id, 1 AS added, 0 AS removed FROM new_rows",
    "UPDATE": (
        "SELECT account_id, 1 AS added, 0 AS removed FROM new_rows "
        "UNION ALL SELECT account_id, 0, 1 FROM old_rows"
    ),
    "DELETE": "SELECT account_id, 0 AS added, 1 AS removed FROM old_rows",
}

# table -> (trigger function name, {operation: deltas SQL}, counters a TRUNCATE clears)
TABLES = {
    "account_state": ("risk_count_tiers", TIER_DELTAS, "counter LIKE 'tier:%'"),
    "accounts": ("risk_count_accounts", ACCOUNT_DELTAS, "counter = 'accounts'"),
    "positions": (
        "risk_count_positions",
        {op_: POSITION_DELTAS.format(changed=c) for op_, c in POSITION_CHANGED.items()},
        "counter = 'accounts_with_positions'",
    ),
}


def _function(name: str, deltas: dict[str, str], truncated: str) -> str:
    branches = "\n".join(
        f"  {'IF' if i == 0 else 'ELSIF'} TG_OP = '{op_}' THEN {ADD.format(deltas=sql)};"
        for i, (op_, sql) in enumerate(deltas.items())
    )
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        f"  IF TG_OP = 'TRUNCATE' THEN DELETE FROM risk_counters WHERE {truncated};\n"
        f"  RETURN NULL; END IF;\n{branches}\n  END IF;\n  RETURN NULL;\nEND $$"
    )


def upgrade() -> None:
    op.execute(
        "CREATE TABLE risk_counters (slot smallint NOT NULL, counter text NOT NULL, "
        "n bigint NOT NULL, PRIMARY KEY (slot, counter))"
    )
    op.execute(SLOT_FUNCTION)
    for table, (fn, deltas, truncated) in TABLES.items():
        op.execute(_function(fn, deltas, truncated))
        for op_ in deltas:
            refs = {"INSERT": "NEW TABLE AS new_rows", "DELETE": "OLD TABLE AS old_rows"}.get(
                op_, "OLD TABLE AS old_rows NEW TABLE AS new_rows"
            )
            op.execute(
                f"CREATE TRIGGER {fn}_{op_.lower()} AFTER {op_} ON {table} "
                f"REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
            )
        op.execute(
            f"CREATE TRIGGER {fn}_truncate AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
        )
    # seeded from the rows there are: the triggers exist already (CREATE TRIGGER locks
    # each table against writes until this transaction commits), so no write of a
    # running instance falls between the counts and the triggers
    op.execute(
        "INSERT INTO risk_counters (slot, counter, n) "
        "SELECT 0, 'tier:' || status, count(*) FROM account_state GROUP BY status "
        "UNION ALL SELECT 0, 'accounts', count(*) FROM accounts "
        "UNION ALL SELECT 0, 'accounts_with_positions', count(DISTINCT account_id) "
        "FROM positions"
    )


def downgrade() -> None:
    for table, (fn, deltas, _) in TABLES.items():
        for op_ in (*deltas, "TRUNCATE"):
            op.execute(f"DROP TRIGGER {fn}_{op_.lower()} ON {table}")
        op.execute(f"DROP FUNCTION {fn}()")
    op.execute("DROP FUNCTION risk_counter_slot()")
    op.execute("DROP TABLE risk_counters")
