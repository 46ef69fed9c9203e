"""The projector logic: how each (upcast) event changes the read-model rows. Pure Python on
dicts, the same in both modes; `projections/readmodels.py` loads the rows a batch touches,
folds the batch into them here, and writes them back in one transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Row = dict[str, Any]
Envelope = dict[str, Any]

KIND_OF_STREAM = {"User": "user", "Product": "product", "Order": "order"}


def to_cents(amount: str) -> int:
    return int(Decimal(amount).scaleb(2))


def from_cents(cents: int) -> str:
    return str(Decimal(cents).scaleb(-2))


@dataclass
class Batch:
    """The rows one batch reads and writes: current rows by kind and id, plus sales deltas."""

    rows: dict[str, dict[str, Row]] = field(default_factory=lambda: defaultdict(dict))
    sales: dict[tuple[str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )
    changed: dict[tuple[str, str], int] = field(default_factory=dict)

    def row(self, kind: str, row_id: str) -> Row | None:
        return self.rows[kind].get(row_id)

    def put(self, kind: str, row: Row) -> None:
        self.rows[kind][row["id"]] = row
        self.changed[(kind, row["id"])] = row["version"]


def fold(batch: Batch, event: Envelope) -> None:
    """Applies one event; the caller has checked it is the stream's next version."""
    kind = KIND_OF_STREAM[event["stream_type"]]
    stream_id = event["stream_id"]
    handler = HANDLERS[event["event_type"]]
    current = batch.row(kind, stream_id)
    updated = handler(current, event["data"], event["recorded_at"], batch)
    if updated is not None:
        updated["id"] = stream_id
        updated["version"] = event["stream_version"]
        updated["updated_at"] = event["recorded_at"]
        batch.put(kind, updated)
    elif current is not None:  # the event changes nothing shown, but the version moves on
        batch.put(kind, current | {"version": event["stream_version"]})


# --- users -------------------------------------------------------------------------------


def user_registered(_: Row | None, data: dict, at: str, __: Batch) -> Row:
    return {
        "email": data["email"],
        "first_name": data["first_name"],
        "last_name": data["last_name"],
        "status": "active",
        "registered_at": at,
    }


def _set(**values: Any) -> Callable[[Row | None, dict, str, Batch], Row | None]:
    """A handler that sets fields from the event's data (`"$name"`) or to constants."""

    def handler(row: Row | None, data: dict, _: str, __: Batch) -> Row | None:
        if row is None:
            return None
        resolved = {
            k: data[v[1:]] if isinstance(v, str) and v.startswith("$") else v
            for k, v in values.items()
        }
        return row | resolved

    return handler


# --- products ----------------------------------------------------------------------------


def product_created(_: Row | None, data: dict, at: str, __: Batch) -> Row:
    return {
        "sku": data["sku"],
        "name": data["name"],
        "description": data["description"],
        "category": data["category"],
        "price_cents": to_cents(data["price"]),
        "currency": data["currency"],
        "stock": data["stock"],
        "status": "active",
        "created_at": at,
    }


def price_changed(row: Row | None, data: dict, _: str, __: Batch) -> Row | None:
    if row is None:
        return None
    return row | {"price_cents": to_cents(data["price"]), "currency": data["currency"]}


def stock_moved(sign: int) -> Callable[[Row | None, dict, str, Batch], Row | None]:
    def handler(row: Row | None, data: dict, _: str, __: Batch) -> Row | None:
        if row is None:
            return None
        delta = data["delta"] if "delta" in data else data["quantity"]
        return row | {"stock": row["stock"] + sign * delta}

    return handler


# --- orders and sales --------------------------------------------------------------------


def order_placed(_: Row | None, data: dict, at: str, __: Batch) -> Row:
    return {
        "user_id": data["user_id"],
        "status": "placed",
        "total_cents": to_cents(data["total"]),
        "currency": data["currency"],
        "lines": data["lines"],
        "placed_at": at,
    }


def _book_sales(batch: Batch, order: Row, day: str, sign: int) -> None:
    for line in order["lines"]:
        key = (day, line["product_id"], order["currency"])
        batch.sales[key][0] += sign * line["quantity"]
        batch.sales[key][1] += sign * line["quantity"] * to_cents(line["unit_price"])


def order_paid(row: Row | None, _: dict, at: str, batch: Batch) -> Row | None:
    """Sales count on the day an order is paid."""
    if row is None:
        return None
    _book_sales(batch, row, at[:10], +1)
    return row | {"status": "paid"}


def order_cancelled(row: Row | None, _: dict, at: str, batch: Batch) -> Row | None:
    """A paid order cancelled is taken back out of sales, on the day it was cancelled."""
    if row is None:
        return None
    if row["status"] == "paid":
        _book_sales(batch, row, at[:10], -1)
    return row | {"status": "cancelled"}


HANDLERS: dict[str, Callable[[Row | None, dict, str, Batch], Row | None]] = {
    "UserRegistered": user_registered,
    "UserEmailChanged": _set(email="$email"),
    "UserDeactivated": _set(status="deactivated"),
    "UserReactivated": _set(status="active"),
    "UserPersonalDataErased": _set(email=None, first_name=None, last_name=None),
    "ProductCreated": product_created,
    "ProductRenamed": _set(name="$name", description="$description"),
    "ProductPriceChanged": price_changed,
    "ProductStockAdjusted": stock_moved(+1),
    "ProductStockReserved": stock_moved(-1),
    "ProductStockReleased": stock_moved(+1),
    "ProductDiscontinued": _set(status="discontinued"),
    "OrderPlaced": order_placed,
    "OrderPaid": order_paid,
    "OrderShipped": _set(status="shipped"),
    "OrderDelivered": _set(status="delivered"),
    "OrderCancelled": order_cancelled,
}
