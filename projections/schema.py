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


def schema_statements(dialect: str, p: str, tag: str) -> list[str]:
    """CREATE statements for tables prefixed `p`, their indexes and triggers named after
    `tag`. Tables are renamed when a rebuild is swapped in; index and trigger names stay,
    so each build of the tables gets its own `tag` (PostgreSQL indexes and SQLite triggers
    follow their table through a rename)."""
    search = (
        ", search tsvector GENERATED ALWAYS AS (to_tsvector('english',"
        " coalesce(name, '') || ' ' || coalesce(description, ''))) STORED"
        if dialect == "postgres"
        else ""
    )
    statements = [
        f"CREATE TABLE {p}users (id text PRIMARY KEY, version bigint NOT NULL,"
        " email text, first_name text, last_name text, status text NOT NULL,"
        " registered_at text NOT NULL, updated_at text NOT NULL)",
        f"CREATE INDEX {tag}users_email ON {p}users (lower(email))",
        f"CREATE TABLE {p}products (id text PRIMARY KEY, version bigint NOT NULL,"
        " sku text NOT NULL, name text NOT NULL, description text NOT NULL,"
        " category text NOT NULL, price_cents bigint NOT NULL, currency text NOT NULL,"
        " stock bigint NOT NULL, status text NOT NULL, created_at text NOT NULL,"
        f" updated_at text NOT NULL{search})",
        f"CREATE INDEX {tag}products_name ON {p}products (name, id)",
        f"CREATE INDEX {tag}products_price ON {p}products (price_cents, id)",
        f"CREATE INDEX {tag}products_newest ON {p}products (created_at, id)",
        f"CREATE INDEX {tag}products_category ON {p}products (category, price_cents, id)",
        f"CREATE TABLE {p}orders (id text PRIMARY KEY, version bigint NOT NULL,"
        " user_id text NOT NULL, status text NOT NULL, total_cents bigint NOT NULL,"
        " currency text NOT NULL, lines text NOT NULL, placed_at text NOT NULL,"
        " updated_at text NOT NULL)",
        f"CREATE INDEX {tag}orders_by_user ON {p}orders (user_id, placed_at, id)",
        f"CREATE INDEX {tag}orders_by_user_status ON {p}orders (user_id, status, placed_at, id)",
        f"CREATE TABLE {p}sales (day text NOT NULL, product_id text NOT NULL,"
        " currency text NOT NULL, units bigint NOT NULL, revenue_cents bigint NOT NULL,"
        " PRIMARY KEY (day, product_id, currency))",
        f"CREATE INDEX {tag}sales_by_product ON {p}sales (product_id, day)",
        f"CREATE TABLE {p}stream_versions (stream_id text PRIMARY KEY, version bigint NOT NULL)",
    ]
    if dialect == "postgres":
        statements.append(f"CREATE INDEX {tag}products_search ON {p}products USING gin (search)")
    else:  # an FTS5 index of the products, kept in step by triggers
        statements += [
            f"CREATE VIRTUAL TABLE {p}products_fts USING fts5(name, description,"
            " tokenize='porter unicode61')",
            f"CREATE TRIGGER {tag}products_ai AFTER INSERT ON {p}products BEGIN"
            f" INSERT INTO {p}products_fts (rowid, name, description)"
            " VALUES (new.rowid, new.name, new.description); END",
            f"CREATE TRIGGER {tag}products_au AFTER UPDATE ON {p}products BEGIN"
            f" UPDATE {p}products_fts SET name = new.name, description = new.description"
            " WHERE rowid = old.rowid; END",
        ]
    # Last: its presence says the rest exists (see ReadModels.migrate).
    statements.append(f"CREATE TABLE {p}progress (key text PRIMARY KEY, value bigint NOT NULL)")
    return statements
