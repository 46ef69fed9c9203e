"""The tables of webhook subscriptions and deliveries (api/webhooks.py), in the key store's
database: created by its migration 3 (api/keys.py)."""

# Portable SQL (SQLite and PostgreSQL).
WEBHOOK_TABLES = (
    """CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    stream_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'paused')),
    position BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    secret_sealed TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    updated_at TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_of ON webhook_deliveries (webhook_id, position)",
)
