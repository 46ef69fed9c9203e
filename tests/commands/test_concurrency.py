"""Many clients ordering the last units of one product at once: exactly as many orders succeed
as the stock allows, the others are refused for stock, and stock never goes below zero."""

from __future__ import annotations

import threading
from uuid import UUID

import pytest

from eventkeep.commands.errors import VersionConflict
from eventkeep.domain.errors import StockInsufficient
from tests.commands.shopping import Writer, create_product, order, register, send, stock

CLIENTS = 8


def order_until_decided(writer: Writer, user_id: UUID, product_id: UUID) -> str:
    """Places an order for one unit, retrying as a client would while writers conflict."""
    for _ in range(50):
        try:
            send(writer, order(user_id, (product_id, 1)))
            return "placed"
        except StockInsufficient:
            return "refused"
        except VersionConflict:
            continue
    return "gave up"


@pytest.mark.parametrize("units", [1, 3, CLIENTS])
def test_only_the_stock_there_is_can_be_ordered(writer: Writer, units: int) -> None:
    users = [register(writer, f"client{i}@example.com") for i in range(CLIENTS)]
    product_id = create_product(writer, stock=units + 5)
    # Leave only `units` to order: five are already sold to someone else.
    send(writer, order(register(writer, "early@example.com"), (product_id, 5)))
    outcomes: list[str] = []
    start = threading.Barrier(CLIENTS)

    def client(user_id: UUID) -> None:
        start.wait()
        outcomes.append(order_until_decided(writer, user_id, product_id))

    threads = [threading.Thread(target=client, args=(user_id,)) for user_id in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(outcomes) == sorted(["placed"] * units + ["refused"] * (CLIENTS - units))
    assert stock(writer, product_id) == 0
    # Replayed event by event, the stock never went below zero on the way.
    running = []
    for event in writer.history(product_id):
        delta = {"ProductStockReserved": -1, "ProductStockReleased": 1}.get(type(event).__name__)
        if delta is not None:
            running.append((running[-1] if running else units + 5) + delta * event.quantity)
    assert min(running) >= 0
    reservations = [
        event
        for event in writer.history(product_id)
        if type(event).__name__ == "ProductStockReserved"
    ]
    assert sum(event.quantity for event in reservations) == units + 5
