"""The seeder writes a consistent shop: every order's stock reserved (and released when
cancelled), emails claimed, statuses along the allowed transitions."""

from __future__ import annotations

from collections import Counter

import pytest

from eventkeep.api.bootstrap import Wiring
from eventkeep.bench.seed import STOCK, Seeder, SeedSizes
from eventkeep.commands.errors import EmailTaken
from eventkeep.commands.messages import CommandContext, RegisterUser
from eventkeep.domain.order import Order
from eventkeep.domain.product import Product


def test_seeded_history_keeps_the_invariants(wiring: Wiring) -> None:
    bus = wiring.handle.__self__  # type: ignore[attr-defined]
    seeder = Seeder(bus, SeedSizes(users=20, products=10, orders=120, per_save=7), seed=1)
    phases: Counter[str] = Counter()

    seeder.run(lambda phase, done: phases.update({phase: done}))

    assert phases == {"users": 20, "products": 10, "orders": 120}
    log = wiring.shop.recorder.select_notifications(1, 10_000)
    assert len(log) == seeder.events
    orders = [wiring.shop.repository.get(e.originator_id) for e in log if e.topic == "OrderPlaced"]
    assert len(orders) == 120
    reserved: Counter[str] = Counter()
    for order in orders:
        assert isinstance(order, Order)
        if order.status != "cancelled":
            reserved.update({line["product_id"]: line["quantity"] for line in order.lines})
    for product in seeder.products:
        stored = wiring.shop.repository.get(product.id)
        assert isinstance(stored, Product)
        assert stored.stock == STOCK - reserved[str(product.id)]


def test_seeded_emails_are_claimed(wiring: Wiring) -> None:
    bus = wiring.handle.__self__  # type: ignore[attr-defined]
    seeder = Seeder(bus, SeedSizes(users=3, products=1, orders=0), seed=1)
    seeder.run(lambda phase, done: None)

    taken = seeder.users[0].email.upper()
    with pytest.raises(EmailTaken):
        wiring.handle(
            RegisterUser(taken, "A", "B"), CommandContext(actor="test", correlation_id="c")
        )
