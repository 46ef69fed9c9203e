"""The tables of customers' credentials (api/accounts.py), in the key store's database:
created by its migration 2 (api/keys.py)."""

# Portable SQL (SQLite and PostgreSQL), created by the key store's migration 2.
CREDENTIAL_TABLES = (
    """CREATE TABLE IF NOT EXISTS customer_credentials (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    changed_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS customer_sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
)""",
    "CREATE INDEX IF NOT EXISTS customer_sessions_user ON customer_sessions (user_id)",
    """CREATE TABLE IF NOT EXISTS customer_refresh_tokens (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE
)""",
    "CREATE INDEX IF NOT EXISTS customer_refresh_user ON customer_refresh_tokens (user_id)",
    """CREATE TABLE IF NOT EXISTS login_failures (
    account TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    locked_until TEXT
)""",
)

# Migration 4: each failure row's last time, so that rows no lock needs any more are pruned
# (PostgreSQL: IF NOT EXISTS, as the tables of migration 2 and 3 may predate their version).
_DELIVERIES_BY_TIME = (
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_updated ON webhook_deliveries (updated_at)"
)
LOGIN_FAILURE_TIMES_POSTGRES = (
    "ALTER TABLE login_failures ADD COLUMN IF NOT EXISTS last_failed_at TEXT",
    _DELIVERIES_BY_TIME,
)
LOGIN_FAILURE_TIMES_SQLITE = (
    "ALTER TABLE login_failures ADD COLUMN last_failed_at TEXT",
    _DELIVERIES_BY_TIME,
)
