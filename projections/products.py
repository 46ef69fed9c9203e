"""Products by id, and searched: full text over name and description (PostgreSQL tsvector,
SQLite FTS5), filters by category and price, four sorts, keyset pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventkeep.projections.cursors import decode_cursor
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

# The rare states (a few per cent of a shop), under their indexes' names: each has an index of
# every sort of its own rows only (partial), which a search for it walks as it walks the whole
# shop's. The condition is written as the indexes' predicate, so that a plan may use them.
RARE = {"out_of_stock": "stock <= 0", "discontinued": "status = 'discontinued'"}

# A search with a filter no index answers in its order (words, a price range under another
# sort, the common states) walks at most this many rows per row of its page in the page's
# order; when that fills no page, its matches are looked up first and sorted (`SearchPlan`).
WALK_PER_ROW = 50


class Products(ReadModel):
    name = "products"
    stream_type = "Product"
    leaves_sealed = frozenset({"ProductStockAdjusted"})  # its reason is not shown
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
            # A page of every sort, with or without a category, of the whole shop or of a
            # rare state's rows (`RARE`), walks one index in that order and stops after the
            # page (`SearchPlan`, tests/projections/test_search_plans.py).
            *(
                f"CREATE INDEX {tag}products_{sort}{by}{state} ON {t} ({lead}{column}, id){where}"
                for sort, column in SORT_COLUMNS.items()
                for by, lead in (("", ""), ("_by_category", "category, "))
                for state, where in (
                    ("", ""),
                    *((f"_{name}", f" WHERE {rare}") for name, rare in RARE.items()),
                )
            ),
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


@dataclass(frozen=True)
class SearchPlan:
    """The statements of one search, each `(sql, params)`, reading `limit` + 1 rows in the
    page's order.

    `walk` reads the rows of one index in the page's order (the category's or the whole
    shop's, of a rare state or not, from the cursor on, within the price range when the page
    is sorted by price), at most `WALK_PER_ROW` per row of the page, and keeps those the other
    filters (`rest`) match: when the matches are common, it stops after the page. When it
    finds fewer than a page (rare matches, or none left), `matches` (None when there is no
    other filter: the walk is exact) reads every match through the indexes of its filters
    (the text index, the category's, a price range, a rare state's) before sorting them, so
    it reads about as many rows as there are matches. Either way no search reads more than
    its page's share of the walk plus its matches, whatever the planner estimates: its
    estimates of words (an unknown word, a word and a category that rarely meet) are what
    made it walk a whole category, or the whole shop, for no match.
    """

    walk: tuple[str, list[Any]]
    matches: tuple[str, list[Any]] | None
    column: str
    limit: int


class ProductQueries(ReadModelQueries):
    model: Products

    def search(self, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        """A page of products (`SearchFilters`' keywords), and the next page's cursor."""
        plan = self.search_plan(**filters)
        with self.model.db.reading(custom_plans=True) as db:
            db.execute(*plan.walk)
            rows = db.fetchall()
            if plan.matches is not None and len(rows) <= plan.limit:
                db.execute(*plan.matches)
                rows = db.fetchall()
        return self.model.paged(rows, plan.column, plan.limit)

    def search_plan(self, **filters: Any) -> SearchPlan:
        """The statements `search` runs for these filters (to EXPLAIN them)."""
        f = SearchFilters(**filters)
        column, direction = SORTS[f.sort]
        walked, walked_params, rest, rest_params = self._conditions(f, column)
        if f.cursor is not None:
            walked.append(f"({column}, id) {'>' if direction == 'asc' else '<'} (%s, %s)")
            walked_params.extend(decode_cursor(f.cursor, column))
        table, shown_columns = self.model.table(), self.model.shown_columns
        where = " AND ".join(walked) or "true"
        order = f"ORDER BY {column} {direction}, id {direction} LIMIT %s"
        page = f.limit + 1
        if not rest:
            walk = f"SELECT {shown_columns} FROM {table} WHERE {where} {order}"
            return SearchPlan((walk, [*walked_params, page]), None, column, f.limit)
        others = " AND ".join(rest)
        # Both find the page's ids and sort values (narrow rows: carrying every column of
        # each row read cost 6x), then read the page's rows by id. The walk's rows carry what
        # the other filters read (the text index's key).
        key = "search" if self.model.db.kind == "postgres" else "rowid AS rowid"
        carried = ", ".join(dict.fromkeys(("id", column, "price_cents", "stock", "status", key)))
        walk = (
            f"SELECT id, {column} FROM (SELECT {carried} FROM {table} WHERE {where} {order})"
            f" AS walk WHERE {others} {order}"
        )
        # MATERIALIZED: the matches are planned without the page's order, so found through
        # their filters' indexes, never by walking an index in order for them.
        matches = (
            f"WITH matches AS MATERIALIZED (SELECT id, {column} FROM {table}"
            f" WHERE {where} AND {others}) SELECT id, {column} FROM matches {order}"
        )
        return SearchPlan(
            (
                self._rows_of(walk, column, direction),
                [*walked_params, page * WALK_PER_ROW, *rest_params, page],
            ),
            (self._rows_of(matches, column, direction), [*walked_params, *rest_params, page]),
            column,
            f.limit,
        )

    def _rows_of(self, page: str, column: str, direction: str) -> str:
        """The shown rows of the ids `page` selects, in the page's order."""
        shown_columns = ", ".join(f"p.{c}" for c in self.model.columns)
        return (
            f"SELECT {shown_columns} FROM ({page}) AS page"
            f" JOIN {self.model.table()} AS p ON p.id = page.id"
            f" ORDER BY p.{column} {direction}, p.id {direction}"
        )

    def _conditions(
        self, f: SearchFilters, column: str
    ) -> tuple[list[str], list[Any], list[str], list[Any]]:
        """The filters an index answers in the page's order (its leading category, its rare
        state, a price range on the price sort), and the others, each with their values."""
        walked: list[str] = []
        walked_params: list[Any] = []
        rest: list[str] = []
        rest_params: list[Any] = []
        if f.category is not None:
            walked.append("category = %s")
            walked_params.append(f.category)
        states: list[str] = []
        if f.in_stock is not None:
            states.append(RARE["out_of_stock"] if not f.in_stock else "stock > 0")
        if f.status == "discontinued":
            states.append(RARE["discontinued"])
        elif f.status is not None:
            rest.append("status = %s")
            rest_params.append(f.status)
        rare = [state for state in states if state in RARE.values()][:1]  # one index walked
        walked.extend(rare)
        rest.extend(state for state in states if state not in rare)
        price, price_params = (
            (walked, walked_params) if column == "price_cents" else (rest, rest_params)
        )
        if f.min_price is not None:
            price.append("price_cents >= %s")
            price_params.append(to_cents(f.min_price))
        if f.max_price is not None:
            price.append("price_cents <= %s")
            price_params.append(to_cents(f.max_price))
        if f.q and (match := self._text_match(f.q)) is not None:
            rest.append(match[0])
            rest_params.append(match[1])
        return walked, walked_params, rest, rest_params

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
