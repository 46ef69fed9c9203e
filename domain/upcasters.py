"""The one upcaster chain: pure functions on the event envelope, one per version step.

Every reader runs `upcast` (aggregate loading through the mapper, the relay, projectors, the
live stream, replay, audit); nothing stored is ever rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

Data = dict[str, Any]

CURRENT_SCHEMA_VERSIONS: dict[str, int] = {
    "UserRegistered": 2,
    "ProductCreated": 2,
    "ProductPriceChanged": 2,
    "OrderPlaced": 2,
    "OrderCancelled": 2,
}


def _cents(cents: int) -> str:
    return str((Decimal(cents) / 100).quantize(Decimal("0.01")))


def user_registered_v1_v2(data: Data) -> Data:
    rest = {k: v for k, v in data.items() if k != "full_name"}
    if data["full_name"] is None:  # erased personal data stays erased
        return rest | {"first_name": None, "last_name": None}
    first, _, last = data["full_name"].partition(" ")
    return rest | {"first_name": first, "last_name": last}


def price_cents_v1_v2(data: Data) -> Data:
    rest = {k: v for k, v in data.items() if k != "price_cents"}
    return rest | {"price": _cents(data["price_cents"]), "currency": "USD"}


def order_placed_v1_v2(data: Data) -> Data:
    lines = [
        {
            "product_id": line["product_id"],
            "quantity": line["qty"],
            "unit_price": _cents(line["price_cents"]),
        }
        for line in data["lines"]
    ]
    return {
        "user_id": data["user_id"],
        "lines": lines,
        "total": _cents(data["total_cents"]),
        "currency": "USD",
    }


def order_cancelled_v1_v2(data: Data) -> Data:
    # Before schema 2 the user was not named (nor the reason sealed under that user's key).
    return {"user_id": None, **data}


STEPS: dict[tuple[str, int], Callable[[Data], Data]] = {
    ("UserRegistered", 1): user_registered_v1_v2,
    ("ProductCreated", 1): price_cents_v1_v2,
    ("ProductPriceChanged", 1): price_cents_v1_v2,
    ("OrderPlaced", 1): order_placed_v1_v2,
    ("OrderCancelled", 1): order_cancelled_v1_v2,
}


def is_current(envelope: Mapping[str, Any]) -> bool:
    """Whether the envelope is at the current schema version of its event type already
    (`upcast` would only copy it)."""
    return (envelope["event_type"], envelope["schema_version"]) not in STEPS


def upcast(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """A new envelope at the current schema version of its event type (input untouched)."""
    event_type = envelope["event_type"]
    version = envelope["schema_version"]
    data = envelope["data"]
    while (step := STEPS.get((event_type, version))) is not None:
        data = step(data)
        version += 1
    return {**envelope, "schema_version": version, "data": data}
