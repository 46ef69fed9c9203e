"""Units and revenue per day, product and currency. A sale counts on the day its order is paid;
a paid order cancelled is taken back out on the day it is cancelled.

Its rows are the orders as far as sales need them (currency, lines, whether paid), kept in a
table of its own so that it is rebuilt and swapped without the orders read model; the answer
is the `daily_sales` table, added to in each batch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from eventkeep.projections.readmodel import (
    Batch,
    Envelope,
    ReadModel,
    ReadModelQueries,
    Row,
    applies,
    from_cents,
    to_cents,
)

SALES = "daily_sales"


class DailySales(ReadModel):
    name = "daily_sales"
    stream_type = "Order"
    leaves_sealed = frozenset({"OrderCancelled"})  # its reason is not counted
    row_table = "daily_sales_orders"
    columns = ("id", "version", "status", "currency", "lines", "updated_at")
    json_columns = frozenset({"lines"})

    def schema(self, tag: str) -> list[str]:
        sales = self.table(SALES)
        return [
            f"CREATE TABLE {self.table()} (id text PRIMARY KEY, version bigint NOT NULL,"
            " status text NOT NULL, currency text NOT NULL, lines text NOT NULL,"
            " updated_at text NOT NULL)",
            f"CREATE TABLE {sales} (day text NOT NULL, product_id text NOT NULL,"
            " currency text NOT NULL, units bigint NOT NULL, revenue_cents bigint NOT NULL,"
            " PRIMARY KEY (day, product_id, currency))",
            f"CREATE INDEX {tag}sales_by_product ON {sales} (product_id, day)",
        ]

    def tables(self) -> tuple[str, ...]:
        return (*super().tables(), SALES)

    @applies("OrderPlaced")
    def placed(self, _: Row | None, event: Envelope) -> Row:
        data = event["data"]
        return {"status": "placed", "currency": data["currency"], "lines": data["lines"]}

    @applies("OrderPaid")
    def paid(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "paid"}

    @applies("OrderCancelled")
    def cancelled(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "cancelled"}

    def apply_event(self, batch: Batch, row: Row | None, event: Envelope) -> Row | None:
        """Books the sale a payment makes, or a cancellation after payment takes back."""
        kind, day = event["event_type"], event["recorded_at"][:10]
        if row is not None and kind == "OrderPaid":
            _book(batch, row, day, +1)
        elif row is not None and kind == "OrderCancelled" and row["status"] == "paid":
            _book(batch, row, day, -1)
        return super().apply_event(batch, row, event)

    def write_effects(self, cursor: Any, batch: Batch) -> None:
        if batch.extra:
            sales = self.table(SALES)
            self.db.insert_rows(
                cursor,
                sales,
                ("day", "product_id", "currency", "units", "revenue_cents"),
                [(*key, units, revenue) for key, (units, revenue) in batch.extra.items()],
                "ON CONFLICT (day, product_id, currency) DO UPDATE"
                f" SET units = {sales}.units + excluded.units,"
                f" revenue_cents = {sales}.revenue_cents + excluded.revenue_cents",
            )

    def dump(self, cursor: Any) -> dict[str, list[Row]]:
        tables = super().dump(cursor)
        cursor.execute(f"SELECT * FROM {self.table(SALES)} ORDER BY day, product_id, currency")
        return tables | {SALES: cursor.fetchall()}


def _book(batch: Batch, order: Row, day: str, sign: int) -> None:
    if not batch.extra:
        batch.extra = defaultdict(lambda: [0, 0])
    for line in order["lines"]:
        key = (day, line["product_id"], order["currency"])
        batch.extra[key][0] += sign * line["quantity"]
        batch.extra[key][1] += sign * line["quantity"] * to_cents(line["unit_price"])


class SalesQueries(ReadModelQueries):
    model: DailySales

    def sales(self, *, start: str, end: str, product_id: str | None = None) -> list[dict[str, Any]]:
        where, params = ["day >= %s", "day <= %s"], [start, end]
        if product_id is not None:
            where.append("product_id = %s")
            params.append(product_id)
        with self.model.db.reading() as db:
            db.execute(
                "SELECT day, product_id, currency, units, revenue_cents FROM"
                f" {self.model.table(SALES)} WHERE {' AND '.join(where)}"
                " ORDER BY day, product_id, currency",
                params,
            )
            rows = db.fetchall()
        return [
            {
                "day": row["day"],
                "product_id": row["product_id"],
                "units": row["units"],
                "revenue": from_cents(row["revenue_cents"]),
                "currency": row["currency"],
            }
            for row in rows
        ]

    def of_products(self, product_ids: list[str], *, start: str, end: str) -> list[dict[str, Any]]:
        """The sales of many products between two days, in one statement (GraphQL's batched
        loading), in the order of `sales`."""
        if not product_ids:
            return []
        where, params = self.model.db.in_list("product_id", product_ids)
        with self.model.db.reading() as db:
            db.execute(
                "SELECT day, product_id, currency, units, revenue_cents FROM"
                f" {self.model.table(SALES)} WHERE day >= %s AND day <= %s AND {where}"
                " ORDER BY day, product_id, currency",
                [start, end, *params],
            )
            rows = db.fetchall()
        return [
            {
                "day": row["day"],
                "product_id": row["product_id"],
                "units": row["units"],
                "revenue": from_cents(row["revenue_cents"]),
                "currency": row["currency"],
            }
            for row in rows
        ]

    def order_counts(self, product_ids: list[str]) -> dict[str, int]:
        """How many orders not cancelled hold each product (its lines), in one statement;
        read from this read model's own view of the orders."""
        if not product_ids:
            return {}
        orders = self.model.table()
        if self.model.db.kind == "postgres":
            line = "jsonb_array_elements(o.lines::jsonb) AS line"
            product = "line->>'product_id'"
        else:
            line = "json_each(o.lines) AS line"
            product = "json_extract(line.value, '$.product_id')"
        where, params = self.model.db.in_list(product, product_ids)
        with self.model.db.reading() as db:
            db.execute(
                f"SELECT {product} AS product_id, count(DISTINCT o.id) AS orders"
                f" FROM {orders} AS o, {line}"
                f" WHERE o.status <> 'cancelled' AND {where} GROUP BY {product}",
                params,
            )
            rows = db.fetchall()
        counts = dict.fromkeys(product_ids, 0)
        counts.update({row["product_id"]: int(row["orders"]) for row in rows})
        return counts
