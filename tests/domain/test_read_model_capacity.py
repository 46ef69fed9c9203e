"""Every read-model column holds the largest values the domain accepts: the events of products
at the top price and stock, and of orders at the top total, paid and cancelled on one day,
apply to both backends' read models (SQLite and the real PostgreSQL) and read back exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.domain.bounds import (
    MAX_LINES,
    MAX_ORDER_TOTAL,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_STOCK,
)
from eventkeep.domain.catalog import stream_type_of
from eventkeep.domain.ordering import cancel_order, place_order
from eventkeep.domain.product import Product
from eventkeep.domain.user import User
from eventkeep.eventstore.mapper import ENVELOPE_ATTRIBUTES
from eventkeep.projections.daily_sales import SalesQueries
from eventkeep.projections.readmodels import ReadModels
from tests.conftest_services import POSTGRES_URL, require_env

DAY = "2026-11-30"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    prefix = f"cap{uuid.uuid4().hex[:8]}_"
    if request.param == "sqlite":
        opened = ReadModels.open(sqlite_path=tmp_path_factory.mktemp("rm") / "rm.db", prefix=prefix)
    else:
        opened = ReadModels.open(postgres_url=require_env(POSTGRES_URL), prefix=prefix)
    opened.migrate()
    yield opened
    opened.drop()
    opened.close()


class Log:
    """Envelopes of the aggregates' new events, as the store would hand them to a projector."""

    def __init__(self) -> None:
        self.position = 0
        self.events: list[dict[str, Any]] = []

    def record(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            for event in aggregate.collect_events():
                self.position += 1
                data = {k: v for k, v in vars(event).items() if k not in ENVELOPE_ATTRIBUTES}
                self.events.append(
                    {
                        "position": self.position,
                        "stream_id": str(event.originator_id),
                        "stream_type": stream_type_of(type(event)),
                        "stream_version": event.originator_version,
                        "event_type": type(event).__name__,
                        "schema_version": getattr(type(event), "class_version", 1),
                        "recorded_at": f"{DAY}T12:00:00.000000Z",
                        "data": orjson.loads(orjson.dumps(data)),
                        "metadata": {},
                    }
                )


PRICES = st.one_of(
    st.just(MAX_PRICE),
    st.integers(1, int(MAX_PRICE * 100)).map(lambda cents: Decimal(cents) / 100),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(price=PRICES, lines=st.integers(1, MAX_LINES), paid_orders=st.integers(1, 5))
def test_the_largest_accepted_values_fit_every_column(
    models: ReadModels, price: Decimal, lines: int, paid_orders: int
) -> None:
    log = Log()
    buyer = User.register("ada@example.org", "Ada", "Lovelace")
    item = Product.create("SKU-1", "n" * 200, "d" * 5000, "c", str(price), "EUR", MAX_STOCK)
    log.record(buyer, item)
    # The most units the total allows, spread over `lines` lines of at most MAX_QUANTITY.
    units = min(int(MAX_ORDER_TOTAL / price), MAX_QUANTITY * lines, MAX_STOCK // paid_orders)
    per_line = [units // lines + (1 if i < units % lines else 0) for i in range(lines)]
    per_line = [q for q in per_line if q > 0]
    orders = []
    for _ in range(paid_orders):
        order, changed = place_order(buyer, [(item, q) for q in per_line])
        order.pay(str(order.total), "pay-ref")
        log.record(order, *changed)
        orders.append(order)
    # A paid order cancelled: its units go back to stock and its sale is taken back.
    cancelled, changed = place_order(buyer, [(item, q) for q in per_line[:1]])
    cancelled.pay(str(cancelled.total), "pay-ref")
    cancel_order(cancelled, [item], "changed my mind")
    log.record(cancelled, *changed)

    models.apply(log.events, {"log": log.position})

    shown = models["products"].get(str(item.id))
    assert shown is not None
    assert Decimal(shown["price"]) == price
    assert shown["stock"] == item.stock
    for order in orders:
        row = models["orders"].get(str(order.id))
        assert row is not None and Decimal(row["total"]) == order.total <= MAX_ORDER_TOTAL
    (sale,) = SalesQueries(models["daily_sales"]).sales(start=DAY, end=DAY, product_id=str(item.id))
    assert sale["units"] == units * paid_orders
    assert Decimal(sale["revenue"]) == sum(order.total for order in orders)


def test_the_top_stock_with_open_reservations_given_back_fits(models: ReadModels) -> None:
    log = Log()
    buyer = User.register("ada@example.org", "Ada", "Lovelace")
    item = Product.create("SKU-1", "n", "d", "c", "0.01", "EUR", MAX_STOCK)
    order, _ = place_order(buyer, [(item, MAX_QUANTITY)] * MAX_LINES)
    item.adjust_stock(MAX_QUANTITY * MAX_LINES, "refill to the top")
    cancel_order(order, [item], "released above the top")
    log.record(buyer, item, order)
    models.apply(log.events, {"log": log.position})
    assert item.stock == MAX_STOCK + MAX_QUANTITY * MAX_LINES
    shown = models["products"].get(str(item.id))
    assert shown is not None and shown["stock"] == item.stock
