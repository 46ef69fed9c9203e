"""The seeder writes a consistent shop: every order's stock reserved (and released when
cancelled), emails claimed, statuses along the allowed transitions."""

from __future__ import annotations

from collections import Counter

import pytest

from eventkeep.bench.seed import STOCK, Seeder, SeedSizes
from eventkeep.bootstrap import Eventkeep
from eventkeep.commands.errors import EmailTaken
from eventkeep.commands.messages import CommandContext, RegisterUser
from eventkeep.domain.order import Order
from eventkeep.domain.product import Product


def test_seeded_history_keeps_the_invariants(system: Eventkeep) -> None:
    bus = system.bus
    seeder = Seeder(bus, SeedSizes(users=20, products=10, orders=120, per_save=7), seed=1)
    phases: Counter[str] = Counter()

    seeder.run(lambda phase, done: phases.update({phase: done}))

    assert phases == {"users": 20, "products": 10, "orders": 120}
    log = system.shop.recorder.select_notifications(1, 10_000)
    assert len(log) == seeder.events
    orders = [system.shop.repository.get(e.originator_id) for e in log if e.topic == "OrderPlaced"]
    assert len(orders) == 120
    reserved: Counter[str] = Counter()
    for order in orders:
        assert isinstance(order, Order)
        if order.status != "cancelled":
            reserved.update({line["product_id"]: line["quantity"] for line in order.lines})
    for product in seeder.products:
        stored = system.shop.repository.get(product.id)
        assert isinstance(stored, Product)
        assert stored.stock == STOCK - reserved[str(product.id)]


def test_seeded_emails_are_claimed(system: Eventkeep) -> None:
    bus = system.bus
    seeder = Seeder(bus, SeedSizes(users=3, products=1, orders=0), seed=1)
    seeder.run(lambda phase, done: None)

    taken = seeder.users[0].email.upper()
    with pytest.raises(EmailTaken):
        system.bus.handle(
            RegisterUser(taken, "A", "B"), CommandContext(actor="test", correlation_id="c")
        )


def test_a_seeder_knows_a_store_it_seeded(system: Eventkeep) -> None:
    sizes = SeedSizes(users=2, products=1, orders=0)
    assert not Seeder(system.bus, sizes, seed=1).already_seeded()
    Seeder(system.bus, sizes, seed=1).run(lambda phase, done: None)
    assert Seeder(system.bus, sizes, seed=1).already_seeded()
    assert not Seeder(system.bus, sizes, seed=1, label="other").already_seeded()
