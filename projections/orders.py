"""Orders by id, and a user's orders by status, newest first."""

from __future__ import annotations

from typing import Any

from eventkeep.projections.readmodel import (
    Envelope,
    ReadModel,
    ReadModelQueries,
    Row,
    applies,
    to_cents,
)


class Orders(ReadModel):
    name = "orders"
    stream_type = "Order"
    leaves_sealed = frozenset({"OrderCancelled"})  # its reason is not shown
    cache_kind = "order"
    columns = (
        "id", "version", "user_id", "status", "total_cents", "currency", "lines", "placed_at",
        "updated_at",
    )  # fmt: skip
    json_columns = frozenset({"lines"})

    def schema(self, tag: str) -> list[str]:
        t = self.table()
        return [
            f"CREATE TABLE {t} (id text PRIMARY KEY, version bigint NOT NULL,"
            " user_id text NOT NULL, status text NOT NULL, total_cents bigint NOT NULL,"
            " currency text NOT NULL, lines text NOT NULL, placed_at text NOT NULL,"
            " updated_at text NOT NULL)",
            f"CREATE INDEX {tag}orders_by_user ON {t} (user_id, placed_at, id)",
            f"CREATE INDEX {tag}orders_by_user_status ON {t} (user_id, status, placed_at, id)",
        ]

    @applies("OrderPlaced")
    def placed(self, _: Row | None, event: Envelope) -> Row:
        data = event["data"]
        return {
            "user_id": data["user_id"],
            "status": "placed",
            "total_cents": to_cents(data["total"]),
            "currency": data["currency"],
            "lines": data["lines"],
            "placed_at": event["recorded_at"],
        }

    @applies("OrderPaid")
    def paid(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "paid"}

    @applies("OrderShipped")
    def shipped(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "shipped"}

    @applies("OrderDelivered")
    def delivered(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "delivered"}

    @applies("OrderCancelled")
    def cancelled(self, row: Row | None, _: Envelope) -> Row | None:
        return None if row is None else row | {"status": "cancelled"}


class OrderQueries(ReadModelQueries):
    model: Orders

    def of_user(
        self, user_id: str, *, status: str | None, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        where, params = ["user_id = %s"], [user_id]
        if status is not None:
            where.append("status = %s")
            params.append(status)
        return self.model.page(where, params, "placed_at", "desc", cursor, limit)
