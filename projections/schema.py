"""The read-model tables and an index for each query shape, in both SQL dialects."""

from __future__ import annotations

TABLES = {"user": "users", "product": "products", "order": "orders"}

COLUMNS: dict[str, tuple[str, ...]] = {
    "user": (
        "id", "version", "email", "first_name", "last_name", "status", "registered_at",
        "updated_at",
    ),
    "product": (
        "id", "version", "sku", "name", "description", "category", "price_cents", "currency",
        "stock", "status", "created_at", "updated_at",
    ),
    "order": (
        "id", "version", "user_id", "status", "total_cents", "currency", "lines", "placed_at",
        "updated_at",
    ),
}  # fmt: skip


def schema_statements(dialect: str, p: str) -> list[str]:
    """CREATE … IF NOT EXISTS statements for tables prefixed `p`."""
    search = (
        ", search tsvector GENERATED ALWAYS AS (to_tsvector('english',"
        " coalesce(name, '') || ' ' || coalesce(description, ''))) STORED"
        if dialect == "postgres"
        else ""
    )
    statements = [
        f"CREATE TABLE IF NOT EXISTS {p}users (id text PRIMARY KEY, version bigint NOT NULL,"
        " email text, first_name text, last_name text, status text NOT NULL,"
        " registered_at text NOT NULL, updated_at text NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {p}users_email ON {p}users (lower(email))",
        f"CREATE TABLE IF NOT EXISTS {p}products (id text PRIMARY KEY, version bigint NOT NULL,"
        " sku text NOT NULL, name text NOT NULL, description text NOT NULL,"
        " category text NOT NULL, price_cents bigint NOT NULL, currency text NOT NULL,"
        " stock bigint NOT NULL, status text NOT NULL, created_at text NOT NULL,"
        f" updated_at text NOT NULL{search})",
        f"CREATE INDEX IF NOT EXISTS {p}products_name ON {p}products (name, id)",
        f"CREATE INDEX IF NOT EXISTS {p}products_price ON {p}products (price_cents, id)",
        f"CREATE INDEX IF NOT EXISTS {p}products_newest ON {p}products (created_at, id)",
        f"CREATE INDEX IF NOT EXISTS {p}products_category"
        f" ON {p}products (category, price_cents, id)",
        f"CREATE TABLE IF NOT EXISTS {p}orders (id text PRIMARY KEY, version bigint NOT NULL,"
        " user_id text NOT NULL, status text NOT NULL, total_cents bigint NOT NULL,"
        " currency text NOT NULL, lines text NOT NULL, placed_at text NOT NULL,"
        " updated_at text NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {p}orders_by_user ON {p}orders (user_id, placed_at, id)",
        f"CREATE INDEX IF NOT EXISTS {p}orders_by_user_status"
        f" ON {p}orders (user_id, status, placed_at, id)",
        f"CREATE TABLE IF NOT EXISTS {p}sales (day text NOT NULL, product_id text NOT NULL,"
        " currency text NOT NULL, units bigint NOT NULL, revenue_cents bigint NOT NULL,"
        " PRIMARY KEY (day, product_id, currency))",
        f"CREATE INDEX IF NOT EXISTS {p}sales_by_product ON {p}sales (product_id, day)",
        f"CREATE TABLE IF NOT EXISTS {p}stream_versions (stream_id text PRIMARY KEY,"
        " version bigint NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {p}progress (key text PRIMARY KEY, value bigint NOT NULL)",
    ]
    if dialect == "postgres":
        statements.append(
            f"CREATE INDEX IF NOT EXISTS {p}products_search ON {p}products USING gin (search)"
        )
    else:  # FTS5 over the products table, kept in step by triggers
        statements += [
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {p}products_fts USING fts5(name, description,"
            f" content='{p}products', content_rowid='rowid', tokenize='porter unicode61')",
            f"CREATE TRIGGER IF NOT EXISTS {p}products_ai AFTER INSERT ON {p}products BEGIN"
            f" INSERT INTO {p}products_fts (rowid, name, description)"
            " VALUES (new.rowid, new.name, new.description); END",
            f"CREATE TRIGGER IF NOT EXISTS {p}products_au AFTER UPDATE ON {p}products BEGIN"
            f" INSERT INTO {p}products_fts ({p}products_fts, rowid, name, description)"
            " VALUES ('delete', old.rowid, old.name, old.description);"
            f" INSERT INTO {p}products_fts (rowid, name, description)"
            " VALUES (new.rowid, new.name, new.description); END",
        ]
    return statements
