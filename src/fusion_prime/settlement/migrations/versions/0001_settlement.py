"""settlement schema: assets, escrows, approvals, chain events, history, anomalies,
commands, webhooks

Revision ID: 0001
Revises:
"""

from alembic import op

from fusion_prime.platform.bus.schema import create_inbox_table, create_outbox_table
from fusion_prime.platform.schema import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ADDRESS = "'^0x[0-9a-f]{40}$'"
TX_HASH = "'^0x[0-9a-f]{64}$'"

# Real token contracts, so a local system accepts commands for them out of the box.
SEED_ASSETS = (
    (1, "0x0000000000000000000000000000000000000000", "ETH", 18),
    (1, "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "USDC", 6),
    (1, "0xdac17f958d2ee523a2206206994597c13d831ec7", "USDT", 6),
    (1, "0x6b175474e89094c44da98b954eedeac495271d0f", "DAI", 18),
    (1, "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", "WETH", 18),
    (1, "0x2260fac5e5542a773aa44fbcfedeaa434bfbd0d5", "WBTC", 8),
    (11155111, "0x0000000000000000000000000000000000000000", "ETH", 18),
    (11155111, "0x1c7d4b196cb0c7b01d743fbc6116a902379c7238", "USDC", 6),
)

SCHEMA = f"""
CREATE TABLE assets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id bigint NOT NULL CHECK (chain_id > 0),
    address text NOT NULL CHECK (address ~ {ADDRESS}),
    symbol text NOT NULL CHECK (symbol ~ '^[A-Za-z0-9.]{{1,16}}$'),
    decimals smallint NOT NULL CHECK (decimals BETWEEN 0 AND 77),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chain_id, address),
    UNIQUE (chain_id, symbol)
);

CREATE TABLE escrows (
    address text PRIMARY KEY CHECK (address ~ {ADDRESS}),
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    chain_id bigint NOT NULL CHECK (chain_id > 0),
    payer text NOT NULL CHECK (payer ~ {ADDRESS}),
    payee text NOT NULL CHECK (payee ~ {ADDRESS}),
    arbiter text NOT NULL CHECK (arbiter ~ {ADDRESS}),
    asset_address text NOT NULL CHECK (asset_address ~ {ADDRESS}),
    asset_decimals smallint NOT NULL CHECK (asset_decimals BETWEEN 0 AND 77),
    amount numeric(78, 0) NOT NULL CHECK (amount >= 0),
    release_delay bigint NOT NULL CHECK (release_delay >= 0),
    approvals_required smallint NOT NULL CHECK (approvals_required BETWEEN 1 AND 3),
    approvals_count smallint NOT NULL DEFAULT 0 CHECK (approvals_count >= 0),
    status text NOT NULL CHECK (status IN ('created', 'approved', 'released', 'refunded')),
    deployed_block bigint NOT NULL,
    deployed_tx_hash text NOT NULL CHECK (deployed_tx_hash ~ {TX_HASH}),
    deployed_log_index integer NOT NULL,
    last_block bigint NOT NULL,
    last_log_index integer NOT NULL,
    last_tx_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'approved' OR approvals_count >= approvals_required)
);
CREATE INDEX ix_escrows_payer ON escrows (payer, seq);
CREATE INDEX ix_escrows_payee ON escrows (payee, seq);
CREATE INDEX ix_escrows_status ON escrows (status, seq);
CREATE INDEX ix_escrows_chain ON escrows (chain_id, seq);

CREATE TABLE escrow_approvals (
    escrow_address text NOT NULL REFERENCES escrows (address),
    approver text NOT NULL CHECK (approver ~ {ADDRESS}),
    role text NOT NULL CHECK (role IN ('payer', 'payee', 'arbiter')),
    block_number bigint NOT NULL,
    tx_hash text NOT NULL,
    log_index integer NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (escrow_address, approver)
);

-- Every chain event accepted once; (chain_id, tx_hash, log_index) is the idempotency key
-- whatever envelope id it arrived in.
CREATE TABLE chain_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id bigint NOT NULL,
    tx_hash text NOT NULL CHECK (tx_hash ~ {TX_HASH}),
    log_index integer NOT NULL CHECK (log_index >= 0),
    block_number bigint NOT NULL CHECK (block_number >= 0),
    event_type text NOT NULL,
    escrow_address text NOT NULL CHECK (escrow_address ~ {ADDRESS}),
    envelope_id uuid NOT NULL,
    data jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_chain_events_key UNIQUE (chain_id, tx_hash, log_index)
);

-- Events for an escrow not deployed yet wait here, never dropped.
CREATE TABLE parked_events (
    chain_event_id bigint PRIMARY KEY REFERENCES chain_events (id),
    escrow_address text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_parked_events_escrow ON parked_events (escrow_address);

CREATE TABLE escrow_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    escrow_address text NOT NULL REFERENCES escrows (address),
    chain_event_id bigint NOT NULL UNIQUE REFERENCES chain_events (id),
    chain_id bigint NOT NULL,
    tx_hash text NOT NULL,
    log_index integer NOT NULL,
    block_number bigint NOT NULL,
    event_type text NOT NULL,
    from_status text,
    to_status text NOT NULL,
    details jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_escrow_history_escrow ON escrow_history (escrow_address, block_number, log_index);

CREATE TABLE escrow_anomalies (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    escrow_address text NOT NULL,
    chain_event_id bigint NOT NULL UNIQUE REFERENCES chain_events (id),
    chain_id bigint NOT NULL,
    tx_hash text NOT NULL,
    log_index integer NOT NULL,
    block_number bigint NOT NULL,
    event_type text NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    status_at_event text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_escrow_anomalies_escrow ON escrow_anomalies (escrow_address, id);

CREATE FUNCTION settlement_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
CREATE TRIGGER escrow_history_immutable BEFORE UPDATE OR DELETE ON escrow_history
    FOR EACH ROW EXECUTE FUNCTION settlement_refuse_change();
CREATE TRIGGER escrow_history_no_truncate BEFORE TRUNCATE ON escrow_history
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_refuse_change();
CREATE TRIGGER escrow_anomalies_immutable BEFORE UPDATE OR DELETE ON escrow_anomalies
    FOR EACH ROW EXECUTE FUNCTION settlement_refuse_change();
CREATE TRIGGER chain_events_immutable BEFORE UPDATE OR DELETE ON chain_events
    FOR EACH ROW EXECUTE FUNCTION settlement_refuse_change();

CREATE TABLE commands (
    id uuid PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    request_hash text NOT NULL,
    action text NOT NULL
        CHECK (action IN ('create_escrow', 'approve', 'release', 'refund', 'change_arbiter')),
    chain_id bigint NOT NULL,
    escrow_address text CHECK (escrow_address ~ {ADDRESS}),
    payer text CHECK (payer ~ {ADDRESS}),
    payee text CHECK (payee ~ {ADDRESS}),
    arbiter text CHECK (arbiter ~ {ADDRESS}),
    asset_address text CHECK (asset_address ~ {ADDRESS}),
    asset_decimals smallint,
    amount numeric(78, 0) CHECK (amount >= 0),
    approvals_required smallint CHECK (approvals_required BETWEEN 1 AND 3),
    release_delay bigint CHECK (release_delay >= 0),
    approver text CHECK (approver ~ {ADDRESS}),
    new_arbiter text CHECK (new_arbiter ~ {ADDRESS}),
    reference text,
    body jsonb NOT NULL,
    status text NOT NULL CHECK (status IN ('received', 'submitted', 'confirmed', 'failed')),
    failure_reason text,
    outbox_event_id uuid,
    confirmed_chain_event_id bigint REFERENCES chain_events (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    submitted_at timestamptz,
    resolved_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_commands_pending_escrow ON commands (escrow_address, action)
    WHERE status IN ('received', 'submitted');
CREATE INDEX ix_commands_pending_create ON commands (chain_id, payer, payee, created_at)
    WHERE status IN ('received', 'submitted') AND action = 'create_escrow';
CREATE INDEX ix_commands_received ON commands (created_at) WHERE status = 'received';

CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    url text NOT NULL CHECK (url ~ '^https?://'),
    event_types text[] NOT NULL CHECK (cardinality(event_types) > 0),
    secret_ciphertext bytea NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    failing_since timestamptz,
    disabled_at timestamptz,
    disabled_reason text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id),
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    escrow_address text NOT NULL,
    body text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    delivered_at timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX ix_webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id),
    attempt integer NOT NULL CHECK (attempt >= 1),
    attempted_at timestamptz NOT NULL DEFAULT now(),
    status_code integer,
    error text,
    duration_ms integer NOT NULL,
    succeeded boolean NOT NULL,
    UNIQUE (delivery_id, attempt)
);
CREATE TRIGGER webhook_attempts_immutable BEFORE UPDATE OR DELETE ON webhook_attempts
    FOR EACH ROW EXECUTE FUNCTION settlement_refuse_change();
"""


def _statements(script: str) -> list[str]:
    """Split on statement-ending semicolons outside $$ bodies (one statement per execute)."""
    statements: list[str] = []
    current: list[str] = []
    in_body = False
    for line in script.splitlines():
        if line.strip().startswith("--") and not in_body:
            continue
        current.append(line)
        if line.count("$$") % 2 == 1:
            in_body = not in_body
        if not in_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    if "".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements


def upgrade() -> None:
    create_platform_tables()
    create_outbox_table()
    create_inbox_table()
    for statement in _statements(SCHEMA):
        op.execute(statement)
    values = ", ".join(f"({c}, '{a}', '{s}', {d})" for c, a, s, d in SEED_ASSETS)
    op.execute(f"INSERT INTO assets (chain_id, address, symbol, decimals) VALUES {values}")


def downgrade() -> None:
    for table in (
        "webhook_attempts",
        "webhook_deliveries",
        "webhook_endpoints",
        "commands",
        "escrow_anomalies",
        "escrow_history",
        "parked_events",
        "chain_events",
        "escrow_approvals",
        "escrows",
        "assets",
        "inbox",
        "outbox",
    ):
        op.execute(f"DROP TABLE {table}")
    drop_platform_tables()
    op.execute("DROP FUNCTION settlement_refuse_change()")
