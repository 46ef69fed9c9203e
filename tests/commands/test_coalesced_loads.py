"""Aggregates not in memory that commands await at the same moment are read in ONE statement
(`ApplicationWriteStore.load_async`, `eventstore.coalesced_reads`; issue 13, W3: most commands
are a product's first sight in their process), each decoded and folded on its own: every
command decides on its own copy, a stream that cannot be read fails only its own command, and
nothing is lost or doubled. Two wirings over one store: `a` writes the streams, `b` (another
API process) has none of them in memory. Both modes."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from eventsourcing.persistence import StoredEvent
from prometheus_client import REGISTRY

from eventkeep.bootstrap import Eventkeep
from eventkeep.commands.messages import AdjustStock, Command, OrderLine, PlaceOrder
from tests.commands.shopping import CONTEXT, create_product, register
from tests.commands.test_cached_aggregates import stored_stock, writer


def together(system: Eventkeep, commands: list[Command]) -> list[Any]:
    """The commands awaited at once on one event loop (as a server's requests are): each
    one's answer, or its exception."""

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(system.bus.handle_async(command, CONTEXT) for command in commands),
            return_exceptions=True,
        )

    return asyncio.run(run())


def load_statements() -> tuple[float, float]:
    """The write path's load statements so far in this process, and the streams they read."""
    count = REGISTRY.get_sample_value("eventkeep_aggregate_load_streams_count") or 0.0
    streams = REGISTRY.get_sample_value("eventkeep_aggregate_load_streams_sum") or 0.0
    return count, streams


def loads_since(before: tuple[float, float]) -> tuple[float, float]:
    now = load_statements()
    return now[0] - before[0], now[1] - before[1]


def test_first_commands_on_different_products_share_one_load(
    two_processes: list[Eventkeep],
) -> None:
    a, b = two_processes
    ids = [create_product(writer(a), stock=10) for _ in range(4)]
    before = load_statements()

    answers = together(b, [AdjustStock(product_id, -1, "sold") for product_id in ids])

    assert [answer.version for answer in answers] == [2, 2, 2, 2]
    assert loads_since(before) == (1, 4)  # one statement read the four streams
    assert [stored_stock(a, product_id) for product_id in ids] == [9, 9, 9, 9]


def test_two_first_commands_on_one_product_both_count_once(
    two_processes: list[Eventkeep],
) -> None:
    """Both decide on their own copy of the one load; the commit refuses the second (same
    version), which loads afresh and decides again: no lost and no doubled adjustment."""
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)
    before = load_statements()

    answers = together(
        b, [AdjustStock(product_id, -1, "sold"), AdjustStock(product_id, -2, "sold")]
    )

    assert sorted(answer.version for answer in answers) == [2, 3]
    # One load for both; the refused one's retry finds the winner in memory or loads again.
    assert loads_since(before) in {(1, 1), (2, 2)}
    assert stored_stock(a, product_id) == 7
    assert [type(e).__name__ for e in writer(a).history(product_id)] == [
        "ProductCreated",
        "ProductStockAdjusted",
        "ProductStockAdjusted",
    ]


def test_a_stream_that_cannot_be_loaded_fails_only_its_own_command(
    two_processes: list[Eventkeep],
) -> None:
    a, b = two_processes
    broken, sound = (create_product(writer(a), stock=10) for _ in range(2))
    # An event of a type this code does not know: its stream cannot be folded.
    a.shop.recorder.insert_events([StoredEvent(broken, 2, "ProductVanished", b"{}")])
    before = load_statements()

    failed, done = together(b, [AdjustStock(broken, -1, "sold"), AdjustStock(sound, -1, "sold")])

    assert isinstance(failed, KeyError) and "ProductVanished" in str(failed)
    assert done.version == 2
    assert loads_since(before) == (1, 2)  # read together all the same
    assert stored_stock(a, sound) == 9
    assert len(writer(a).history(sound)) == 2


def test_an_order_of_things_not_in_memory_loads_them_as_it_needs_them(
    two_processes: list[Eventkeep],
) -> None:
    """A decision that needs several aggregates awaits them one after another (its user, then
    each product), none in a worker thread of its own."""
    a, b = two_processes
    user_id = register(writer(a))
    first, second = (create_product(writer(a), stock=10) for _ in range(2))
    before = load_statements()

    (order,) = together(
        b, [PlaceOrder(user_id, (OrderLine(first, 2), OrderLine(second, 3), OrderLine(first, 1)))]
    )

    assert order.version == 1 and order.created
    assert loads_since(before) == (3, 3)  # the user, then each product once
    assert (stored_stock(a, first), stored_stock(a, second)) == (7, 7)


def test_a_stream_whose_data_key_will_not_open_fails_only_its_own_command(
    two_processes: list[Eventkeep],
) -> None:
    """Opening the sealed fields is part of the load too: a key that will not unwrap fails
    the one stream's command, not every command read in the same statement (found by
    attack: both failed with InvalidTag)."""
    a, b = two_processes
    sound, broken = (create_product(writer(a), stock=10) for _ in range(2))
    writer(a).handle(AdjustStock(broken, 1, "a sealed reason"), CONTEXT)
    recorder: Any = a.shop.recorder
    junk, table = os.urandom(60), recorder._data_keys
    if "SQLite" in type(recorder.sql).__name__:
        with recorder.sql._datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"UPDATE {table} SET wrapped = ? WHERE stream_id = ?", (junk, str(broken))
            )
    else:
        with recorder.datastore.get_connection() as connection:
            connection.execute(
                f"UPDATE {table} SET wrapped = %s WHERE stream_id = %s", (junk, broken)
            )
            connection.commit()
    before = load_statements()

    done, failed = together(b, [AdjustStock(sound, -1, "sold"), AdjustStock(broken, -1, "sold")])

    assert isinstance(failed, InvalidTag), failed
    assert done.version == 2
    assert loads_since(before) == (1, 2)  # read together all the same
    assert stored_stock(a, sound) == 9


def test_closing_the_system_ends_its_loading_threads(two_processes: list[Eventkeep]) -> None:
    """A read hung in a loading thread that nothing closes would keep the process from
    exiting (found by attack: the pool was never shut down)."""
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)
    others = loading_threads()  # of systems other tests left, if any
    together(b, [AdjustStock(product_id, -1, "sold")])  # b's loading threads started
    assert loading_threads() - others

    b.close()

    deadline = time.monotonic() + 30
    while loading_threads() - others:
        assert time.monotonic() < deadline, loading_threads() - others
        time.sleep(0.05)


def loading_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("eventkeep-aggregate-loads")}
