"""What a command gets from the aggregate cache is its own: a command that changes its copy
(its lines, its pending events) and then fails leaves no trace in the next command, however
deep the change and whatever attribute an aggregate gains later; and two processes writing
one product at once (blocking and awaited commands) each store every command they answered
exactly once. Real stores, both modes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from copy import deepcopy
from typing import Any
from uuid import UUID

from eventkeep.bootstrap import Eventkeep
from eventkeep.commands.errors import VersionConflict
from eventkeep.commands.messages import AdjustStock, CancelOrder
from eventkeep.eventstore.aggregate_cache import private_copy
from tests.commands.shopping import CONTEXT, create_product, order, register, send
from tests.commands.test_cached_aggregates import stored_stock, writer

LEAVES = (str, int, float, bytes, type(None))


def mutable_parts(value: Any, seen: set[int] | None = None) -> Iterator[int]:
    """The ids of every object reachable from `value` that could be changed in place."""
    seen = set() if seen is None else seen
    if isinstance(value, LEAVES) or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, dict):
        yield id(value)
        for key, item in value.items():
            yield from mutable_parts(key, seen)
            yield from mutable_parts(item, seen)
    elif isinstance(value, list | set | bytearray):
        yield id(value)
        for item in value:
            yield from mutable_parts(item, seen)
    elif isinstance(value, tuple | frozenset):
        for item in value:
            yield from mutable_parts(item, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield id(value)
        yield from mutable_parts(vars(value), seen)


def shop(system: Eventkeep) -> tuple[UUID, UUID, UUID]:
    """A user, a product of stock 10 and an order of 3 of it, all in `system`'s cache."""
    w = writer(system)
    user_id, product_id = register(w), create_product(w, stock=10)
    order_id = send(w, order(user_id, (product_id, 3))).id
    return user_id, product_id, order_id


def test_a_cached_copy_shares_nothing_mutable_at_any_depth(
    two_processes: list[Eventkeep],
) -> None:
    a, _ = two_processes
    for stream_id in shop(a):
        cached: Any = a.store.cache._entries[stream_id]  # the kept object itself
        copy = a.store.cached(stream_id)
        assert copy is not None and type(copy) is type(cached)
        assert vars(copy) == vars(cached)
        # The aggregate object and its __dict__ are new; nothing inside is shared either.
        shared = set(mutable_parts(cached)) & set(mutable_parts(copy))
        assert not shared, [type(o).__name__ for o in vars(cached).values() if id(o) in shared]
        assert private_copy(copy).__dict__ == vars(cached)


def test_what_a_failed_command_did_to_its_copy_never_reaches_the_next_command(
    two_processes: list[Eventkeep],
) -> None:
    a, _ = two_processes
    _, product_id, order_id = shop(a)
    kept = {i: deepcopy(vars(a.store.cache._entries[i])) for i in (product_id, order_id)}
    # Commands that changed their copies deeply and then failed (never saved): one only
    # the order's lines (a wrong release would follow, with no conflict to reload it), one
    # leaving pending events too.
    spoilt: Any = a.store.cached(order_id)
    spoilt.lines[0]["quantity"] = 99
    spoilt.lines.append({"product_id": str(product_id), "quantity": 5})
    pending: Any = a.store.cached(order_id)
    pending.cancel("decided, then the command failed")  # a pending event, not collected
    product: Any = a.store.cached(product_id)
    product.adjust_stock(500, "decided, then the command failed")
    for stream_id, before in kept.items():
        assert vars(a.store.cache._entries[stream_id]) == before

    # The next command decides on the stored state: it releases the 3 ordered, not 99 or 5,
    # and its events follow the stored ones (no leaked pending event written with them).
    assert send(writer(a), CancelOrder(order_id, "changed my mind")).version == 2
    assert stored_stock(a, product_id) == 10
    assert [type(e).__name__ for e in writer(a).history(order_id)] == [
        "OrderPlaced",
        "OrderCancelled",
    ]
    assert [type(e).__name__ for e in writer(a).history(product_id)] == [
        "ProductCreated",
        "ProductStockReserved",
        "ProductStockReleased",
    ]


def test_two_processes_writing_one_product_at_once_store_each_answer_exactly_once(
    two_processes: list[Eventkeep],
) -> None:
    """Threads (blocking commands) and an event loop (awaited ones) in each of two processes
    add to one product's stock at once: stale copies are refused and decided again on a fresh
    load; every command answered is stored once, and one told "try again" is not stored."""
    product_id = create_product(writer(two_processes[0]), stock=0)
    per_writer, answered, gave_up, failures = 10, [0], [0], []
    lock = threading.Lock()

    def tally(done: bool) -> None:
        with lock:
            (answered if done else gave_up)[0] += 1

    def blocking(system: Eventkeep) -> None:
        for n in range(per_writer):
            try:
                send(writer(system), AdjustStock(product_id, 1, f"blocking {n}"))
                tally(True)
            except VersionConflict:
                tally(False)
            except Exception as error:  # anything else is a failure of this test
                failures.append(error)

    def awaiting(system: Eventkeep) -> None:
        async def one(n: int) -> None:
            try:
                await system.bus.handle_async(AdjustStock(product_id, 1, f"awaited {n}"), CONTEXT)
                tally(True)
            except VersionConflict:
                tally(False)
            except Exception as error:
                failures.append(error)

        async def all_of_them() -> None:
            await asyncio.gather(*(one(n) for n in range(per_writer)))

        asyncio.run(all_of_them())

    threads = [
        threading.Thread(target=work, args=(system,))
        for system in two_processes
        for work in (blocking, blocking, awaiting)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)  # a hang guard: the whole run takes a few seconds
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert answered[0] + gave_up[0] == len(threads) * per_writer
    assert answered[0] > 0
    history = writer(two_processes[1]).history(product_id)
    assert [e.originator_version for e in history] == list(range(1, answered[0] + 2))
    assert stored_stock(two_processes[0], product_id) == answered[0]
    assert stored_stock(two_processes[1], product_id) == answered[0]
