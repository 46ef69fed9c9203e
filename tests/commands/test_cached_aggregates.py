"""The write path trusts its in-memory copies of aggregates (no query before deciding): a copy
made stale by another process costs a retry on a fresh load, never a wrong write and never a
conflict the client did not cause. Two wirings over one store stand for two API processes."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.domain import Aggregate

from eventkeep.bootstrap import Eventkeep, build
from eventkeep.commands.messages import AdjustStock
from eventkeep.domain.product import Product
from eventkeep.eventstore.aggregate_cache import AggregateCache
from eventkeep.eventstore.write_store import ApplicationWriteStore
from tests.api.conftest import embedded_settings
from tests.commands.shopping import Writer, create_product, send


def writer(system: Eventkeep) -> Writer:
    events = system.shop.repository.event_store
    return Writer(system.bus, system.store, lambda: 0, lambda i: list(events.get(i)))


def stored_stock(system: Eventkeep, product_id: object) -> int:
    return system.store.load(product_id, fresh=True).stock  # type: ignore[arg-type,union-attr]


def test_a_stale_copy_is_loaded_afresh_and_the_command_succeeds(
    two_processes: list[Eventkeep],
) -> None:
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)  # `a` keeps version 1 in memory
    send(writer(b), AdjustStock(product_id, 5, "delivery"))  # version 2, unseen by `a`
    answer = send(writer(a), AdjustStock(product_id, 1, "found one"))
    assert answer.version == 3
    assert stored_stock(a, product_id) == stored_stock(b, product_id) == 16
    assert [type(e).__name__ for e in writer(a).history(product_id)] == [
        "ProductCreated",
        "ProductStockAdjusted",
        "ProductStockAdjusted",
    ]


def test_if_match_is_judged_against_the_stored_stream_not_a_stale_copy(
    two_processes: list[Eventkeep],
) -> None:
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)
    send(writer(b), AdjustStock(product_id, 5, "delivery"))
    # The client saw version 2 (written through `b`); `a`'s copy is at 1.
    answer = send(writer(a), AdjustStock(product_id, 1, "recount", expected_version=2))
    assert (answer.version, stored_stock(a, product_id)) == (3, 16)


def test_a_hit_is_a_copy_and_the_cache_keeps_the_newest_version() -> None:
    cache = AggregateCache(maxsize=2)
    product = Product.create("KB-01", "Keyboard", "Mechanical", "peripherals", "1.00", "EUR", 3)
    product.collect_events()
    cache.put(product)
    copy = cache.get(product.id)
    assert isinstance(copy, Product) and copy is not product
    copy.adjust_stock(1, "changed in a command that then fails")
    assert cache.get(product.id).stock == 3  # type: ignore[union-attr]
    older = cache.get(product.id)
    product.adjust_stock(2, "saved")
    cache.put(product)
    assert older is not None
    cache.put(older)  # a slow load of an older version does not replace the newer one
    assert cache.get(product.id).version == 2  # type: ignore[union-attr]


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = AggregateCache(maxsize=2)
    first, second, third = (Aggregate() for _ in range(3))
    cache.put(first)
    cache.put(second)
    assert cache.get(first.id) is not None  # `second` is now the least recently used
    cache.put(third)
    assert (cache.get(second.id), len(cache)) == (None, 2)
    assert cache.get(first.id) is not None and cache.get(third.id) is not None
    cache.evict([first.id, uuid4()])
    assert cache.get(first.id) is None


def test_the_write_store_refuses_a_cache_without_room(tmp_path: Path) -> None:
    with (
        build(embedded_settings(tmp_path / "home"), role="test") as system,
        pytest.raises(ValueError, match="at least one"),
    ):
        ApplicationWriteStore(system.shop, cache_size=0)
