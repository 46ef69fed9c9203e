"""Snapshots of long streams: a hot product loads from its latest snapshot plus the events
after it, and a snapshot written at an older aggregate schema still loads (upcast)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from eventsourcing.domain import Snapshot
from eventsourcing.utils import get_topic

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.shop import SNAPSHOT_INTERVAL
from eventkeep.domain.product import Product

METADATA = {"actor": "test", "correlation_id": "c", "causation_id": None}


def a_product(stock: int = 0) -> Product:
    return Product.create("SKU-1", "Lamp", "Bright", "lighting", "10.00", "EUR", stock)


def test_a_long_stream_loads_from_its_latest_snapshot(wiring: Wiring) -> None:
    shop = wiring.shop
    product = a_product()
    for i in range(SNAPSHOT_INTERVAL * 3 + 20):
        product.adjust_stock(1, f"delivery {i}")
        if i % 50 == 0:
            shop.save(product, metadata=METADATA)
    shop.save(product, metadata=METADATA)

    latest = list(shop.snapshots.get(product.id, desc=True, limit=1))  # type: ignore[union-attr]
    loaded = shop.repository.get(product.id)

    assert [s.originator_version for s in latest] == [SNAPSHOT_INTERVAL * 3]
    assert isinstance(loaded, Product)
    assert (loaded.version, loaded.stock, loaded.price) == (
        product.version,
        product.stock,
        product.price,
    )


def test_a_snapshot_of_the_older_schema_is_upcast_when_loaded(wiring: Wiring) -> None:
    shop = wiring.shop
    product = a_product(stock=5)
    product.adjust_stock(2, "found")
    shop.save(product, metadata=METADATA)
    # State as an older release snapshotted it: price in cents, no currency, schema v1.
    state = {k: v for k, v in vars(product).items() if not k.startswith("_")}
    state = {k: v for k, v in state.items() if k not in ("price", "currency")}
    old = Snapshot(
        originator_id=product.id,
        originator_version=product.version,
        timestamp=datetime.now(UTC),
        topic=get_topic(Product),
        state=state | {"price_cents": 1999},
    )
    shop.snapshots.put([old])  # type: ignore[union-attr]
    product.adjust_stock(-1, "damaged")  # an event after the snapshot
    shop.save(product, metadata=METADATA)

    loaded = shop.repository.get(product.id)

    assert isinstance(loaded, Product)
    assert (loaded.price, loaded.currency) == (Decimal("19.99"), "USD")
    assert (loaded.stock, loaded.version) == (6, product.version)


def test_a_snapshot_written_under_the_old_top_level_class_path_still_loads(wiring: Wiring) -> None:
    shop = wiring.shop
    product = a_product(stock=3)
    shop.save(product, metadata=METADATA)
    state = {k: v for k, v in vars(product).items() if not k.startswith("_")}
    # Releases before the one `eventkeep` package stored the class as `domain.product:Product`.
    old = Snapshot(
        originator_id=product.id,
        originator_version=product.version,
        timestamp=datetime.now(UTC),
        topic="domain.product:Product",
        state=state | {"class_version": Product.class_version},
    )
    shop.snapshots.put([old])  # type: ignore[union-attr]
    product.adjust_stock(4, "delivery")
    shop.save(product, metadata=METADATA)
    shop.repository.cache = None  # type: ignore[assignment]  # load from the store, not memory

    loaded = shop.repository.get(product.id)

    assert isinstance(loaded, Product)
    assert (loaded.stock, loaded.version) == (7, product.version)
