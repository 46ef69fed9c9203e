"""Products by id, and searched: full text over name and description (PostgreSQL tsvector,
SQLite FTS5), filters by category and price, four sorts, keyset pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventkeep.projections.readmodel import (
    Envelope,
    ReadModel,
    ReadModelQueries,
    Row,
    applies,
    shown,
    to_cents,
)

SORTS = {
    "name": ("name", "asc"),
    "price": ("price_cents", "asc"),
    "-price": ("price_cents", "desc"),
    "newest": ("created_at", "desc"),
}


# Each column a page is sorted by, under its index name (both directions walk one index).
SORT_COLUMNS = {"name": "name", "price": "price_cents", "newest": "created_at"}


class Products(ReadModel):
    name = "products"
    stream_type = "Product"
    cache_kind = "product"
    columns = (
        "id", "version", "sku", "name", "description", "category", "price_cents", "currency",
        "stock", "status", "created_at", "updated_at",
    )  # fmt: skip

    def schema(self, tag: str) -> list[str]:
        t = self.table()
        postgres = self.db.kind == "postgres"
        search = (
            ", search tsvector GENERATED ALWAYS AS (to_tsvector('english',"
            " coalesce(name, '') || ' ' || coalesce(description, ''))) STORED"
            if postgres
            else ""
        )
        statements = [
            f"CREATE TABLE {t} (id text PRIMARY KEY, version bigint NOT NULL,"
            " sku text NOT NULL, name text NOT NULL, description text NOT NULL,"
            " category text NOT NULL, price_cents bigint NOT NULL, currency text NOT NULL,"
            " stock bigint NOT NULL, status text NOT NULL, created_at text NOT NULL,"
            f" updated_at text NOT NULL{search})",
            # A page of every sort, with or without a category, walks one index in that
            # order and stops after the page (`SORTS`); the rare filters (out of stock,
            # discontinued) have partial indexes of their few rows, so no plan reads the
            # whole table to find or sort them (tests/projections/test_search_plans.py).
            *(
                f"CREATE INDEX {tag}products_{sort}{by} ON {t} ({lead}{column}, id)"
                for sort, column in SORT_COLUMNS.items()
                for by, lead in (("", ""), ("_by_category", "category, "))
            ),
            f"CREATE INDEX {tag}products_out_of_stock ON {t} (id) WHERE stock <= 0",
            f"CREATE INDEX {tag}products_discontinued ON {t} (id) WHERE status = 'discontinued'",
        ]
        if postgres:
            return [*statements, f"CREATE INDEX {tag}products_search ON {t} USING gin (search)"]
        fts = self.table("products_fts")  # an FTS5 index of the products, kept by triggers
        return [
            *statements,
            f"CREATE VIRTUAL TABLE {fts} USING fts5(name, description,"
            " tokenize='porter unicode61')",
            f"CREATE TRIGGER {tag}products_ai AFTER INSERT ON {t} BEGIN"
            f" INSERT INTO {fts} (rowid, name, description)"
            " VALUES (new.rowid, new.name, new.description); END",
            f"CREATE TRIGGER {tag}products_au AFTER UPDATE ON {t} BEGIN"
            f" UPDATE {fts} SET name = new.name, description = new.description"
            " WHERE rowid = old.rowid; END",
        ]

    def tables(self) -> tuple[str, ...]:
        return (self.name, "products_fts") if self.db.kind == "sqlite" else (self.name,)

    def after_bulk_load(self, cursor: Any) -> None:
        """SQLite: the FTS5 index its triggers keep, filled once from the loaded rows."""
        if self.db.kind == "sqlite":
            cursor.execute(
                f"INSERT INTO {self.table('products_fts')} (rowid, name, description)"
                f" SELECT rowid, name, description FROM {self.table()}"
            )

    @applies("ProductCreated")
    def created(self, _: Row | None, event: Envelope) -> Row:
        data = event["data"]
        return {
            "sku": data["sku"],
            "name": data["name"],
            "description": data["description"],
            "category": data["category"],
            "price_cents": to_cents(data["price"]),
            "currency": data["currency"],
            "stock": data["stock"],
            "status": "active",
            "created_at": event["recorded_at"],
        }

    @applies("ProductRenamed")
    def renamed(self, row: Row | None, event: Envelope) -> Row | None:
        data = event["data"]
        return None if row is None else row | {k: data[k] for k in ("name", "description")}

    @applies("ProductPriceChanged")
    def price_changed(self, row: Row | None, event: Envelope) -> Row | None:
        data = event["data"]
        if row is None:
            return None
        return row | {"price_cents": to_cents(data["price"]), "currency": data["currency"]}

    @applies("ProductStockAdjusted")
    def stock_adjusted(self, row: Row | None, event: Envelope) -> Row | None:
        return _stock_moved(row, event, +1)

    @applies("ProductStockReserved")
    def stock_reserved(self, row: Row | None, event: Envelope) -> Row | None:
        return _stock_moved(row, event, -1)

    @applies("ProductStockReleased")
    def stock_released(self, row: Row | None, event: Envelope) -> Row | None:
        return _stock_moved(row, event, +1)

    @applies("ProductDiscontinued")
    def discontinued(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "discontinued"}


def _stock_moved(row: Row | None, event: Envelope, sign: int) -> Row | None:
    if row is None:
        return None
    data = event["data"]
    delta = data["delta"] if "delta" in data else data["quantity"]
    return row | {"stock": row["stock"] + sign * delta}


@dataclass(frozen=True)
class SearchFilters:
    """What `GET /v1/products` filters and sorts by."""

    q: str | None = None
    category: str | None = None
    min_price: str | None = None
    max_price: str | None = None
    status: str | None = None
    in_stock: bool | None = None
    sort: str = "name"
    cursor: str | None = None
    limit: int = 20


class ProductQueries(ReadModelQueries):
    model: Products

    def search(self, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        """A page of products (`SearchFilters`' keywords), and the next page's cursor."""
        return self.model.page(*self._search(SearchFilters(**filters)))

    def search_statement(self, **filters: Any) -> tuple[str, list[Any]]:
        """The SELECT `search` runs for these filters (to EXPLAIN it)."""
        return self.model.page_statement(*self._search(SearchFilters(**filters)))

    def _search(self, f: SearchFilters) -> tuple[list[str], list[Any], str, str, str | None, int]:
        where: list[str] = ["true"]
        params: list[Any] = []
        if f.q and (match := self._text_match(f.q)) is not None:
            where.append(match[0])
            params.append(match[1])
        if f.category is not None:
            where.append("category = %s")
            params.append(f.category)
        if f.min_price is not None:
            where.append("price_cents >= %s")
            params.append(to_cents(f.min_price))
        if f.max_price is not None:
            where.append("price_cents <= %s")
            params.append(to_cents(f.max_price))
        if f.status is not None:
            where.append("status = %s")
            params.append(f.status)
        if f.in_stock is not None:
            where.append("stock > 0" if f.in_stock else "stock <= 0")
        column, direction = SORTS[f.sort]
        return where, params, column, direction, f.cursor, f.limit

    def by_ids(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Many products by id in one statement (GraphQL's batched loading), by id."""
        if not ids:
            return {}
        where, params = self.model.db.in_list("id", ids)
        with self.model.db.reading() as db:
            db.execute(f"SELECT * FROM {self.model.table()} WHERE {where}", params)
            rows = db.fetchall()
        return {row["id"]: shown(self.model.decoded(row)) for row in rows}

    def _text_match(self, q: str) -> tuple[str, str] | None:
        if self.model.db.kind == "postgres":
            return "search @@ websearch_to_tsquery('english', %s)", q
        words = [w for w in "".join(c if c.isalnum() else " " for c in q).split() if w]
        if not words:
            return None
        match = " ".join(f'"{word}"' for word in words)
        fts = self.model.table("products_fts")
        return f"rowid IN (SELECT rowid FROM {fts} WHERE {fts} MATCH %s)", match
