"""The lean write path (issue 13 item 2): a product gets its data key with its first event,
stored by that event's own append, so its first sealed stock adjustment sends nothing to the
store before its batch (before, that command fetched the key, looked for an erasure, inserted
a key and fetched it again: four statements before deciding). Another process fetches the key
once. Counted on the store's real connections (every read and every insert outside the
committer's batches goes through its dialect), in both modes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import uuid4

import anyio.to_thread
import orjson
import pytest
from eventsourcing.persistence import IntegrityError

from eventkeep.bootstrap import Eventkeep
from eventkeep.commands import handlers
from eventkeep.commands.errors import NotFound, VersionConflict
from eventkeep.commands.messages import (
    AdjustStock,
    ChangeUserEmail,
    CommandContext,
    ErasePersonalData,
)
from eventkeep.commands.shop import SNAPSHOT_INTERVAL
from eventkeep.domain.errors import PersonalDataErased
from eventkeep.eventstore.recorder import Insert
from tests.commands.shopping import CONTEXT, create_product, register
from tests.commands.test_cached_aggregates import stored_stock, writer

Sent = Callable[[], list[str]]


def statements(system: Eventkeep, monkeypatch: pytest.MonkeyPatch) -> Sent:
    """What `system`'s store sends from now on outside the committer's batches: each read and
    each insert committed on its own, as sent (the real calls, only counted)."""
    dialect: Any = system.shop.recorder.sql  # type: ignore[attr-defined]
    sent: list[str] = []
    read, write = dialect.read, dialect.write

    def counted_read(sql: str, params: Any = ()) -> Any:
        sent.append(sql)
        return read(sql, params)

    def counted_write(insert: Insert) -> None:
        sent.append(f"INSERT INTO {insert.table}")
        write(insert)

    monkeypatch.setattr(dialect, "read", counted_read)
    monkeypatch.setattr(dialect, "write", counted_write)
    return lambda: list(sent)


def on_data_keys(sent: list[str]) -> list[str]:
    return [statement for statement in sent if "_data_keys" in statement]


def reasons(system: Eventkeep, product_id: object) -> list[Any]:
    """The product's stock-adjustment reasons as stored (sealed) and as read (opened)."""
    recorder: Any = system.shop.recorder
    raw = recorder.stream_history(product_id)  # opened
    stored = [
        orjson.loads(e.state).get("reason")
        for e in recorder.select_notifications(1, 1000, decrypt=False)
        if e.originator_id == product_id and e.topic == "ProductStockAdjusted"
    ]
    assert all(str(value).startswith("pii:1:") for value in stored)  # sealed at rest
    return [orjson.loads(e.state)["reason"] for e in raw if e.topic == "ProductStockAdjusted"]


def test_a_products_first_stock_adjustment_sends_nothing_before_its_batch(
    two_processes: list[Eventkeep], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)  # its key made and stored with it
    sent = statements(a, monkeypatch)

    writer(a).handle(AdjustStock(product_id, -1, "damaged in transit"), CONTEXT)
    writer(a).handle(AdjustStock(product_id, -1, "sold at the counter"), CONTEXT)

    assert sent() == []  # no key fetched, no erasure looked for, no key inserted
    # The key is stored: another process opens the sealed reasons.
    assert reasons(b, product_id) == ["damaged in transit", "sold at the counter"]


def test_a_process_that_did_not_make_the_stream_fetches_its_key_once(
    two_processes: list[Eventkeep], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)
    sent = statements(b, monkeypatch)

    for reason in ("recount", "returned", "recount again"):
        writer(b).handle(AdjustStock(product_id, 1, reason), CONTEXT)

    assert len(on_data_keys(sent())) == 1  # the one fetch; no erasure looked for, no insert
    assert not [s for s in sent() if s.startswith("INSERT")]
    assert reasons(a, product_id) == ["recount", "returned", "recount again"]


def test_a_user_gets_the_key_of_its_personal_data_with_its_registration(
    two_processes: list[Eventkeep], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_processes
    sent = statements(a, monkeypatch)

    user_id = register(writer(a))

    assert on_data_keys(sent()) == []
    user: Any = b.store.load(user_id, fresh=True)
    assert user is not None and (user.email, user.first_name) == ("ada@example.com", "Ada")


# --- commands awaited on an event loop (`CommandBus.handle_async`) ---------------------------


def awaited(system: Eventkeep, command: Any, context: CommandContext = CONTEXT) -> Any:
    return asyncio.run(system.bus.handle_async(command, context))


def test_an_awaited_command_keeps_every_rule_of_a_blocking_one(
    two_processes: list[Eventkeep],
) -> None:
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)  # `a` keeps version 1 in memory
    writer(b).handle(AdjustStock(product_id, 5, "delivery"), CONTEXT)  # version 2, unseen by a

    # A stale copy: the commit refuses it, the stream is loaded afresh, decided again.
    assert awaited(a, AdjustStock(product_id, 1, "found one")).version == 3
    # If-Match is judged against the stored stream, not a stale copy in memory.
    writer(b).handle(AdjustStock(product_id, 1, "recount"), CONTEXT)  # version 4
    assert awaited(a, AdjustStock(product_id, 1, "again", expected_version=4)).version == 5
    with pytest.raises(VersionConflict):
        awaited(a, AdjustStock(product_id, 1, "late", expected_version=4))
    # A retried command answers what it first answered, with no new event.
    retry = replace(CONTEXT, idempotency_key="test:k1", request_hash="h")
    first = awaited(a, AdjustStock(product_id, -1, "sold"), retry)
    assert awaited(b, AdjustStock(product_id, -1, "sold"), retry) == first
    # Not in memory: loaded in a worker thread; a stream that does not exist: 404.
    assert awaited(b, AdjustStock(product_id, -1, "sold")).version == first.version + 1
    with pytest.raises(NotFound):
        awaited(a, AdjustStock(uuid4(), 1, "nobody's"))
    assert stored_stock(a, product_id) == 10 + 5 + 1 + 1 + 1 - 1 - 1


# --- a stream not in memory: one statement, one worker-thread hop --------------------------


def worker_thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of what is run in a worker thread from now on (`anyio.to_thread.run_sync`
    and the command bus's own `in_a_thread`, still run: only counted)."""
    ran: list[str] = []
    run_sync, in_a_thread = anyio.to_thread.run_sync, handlers.in_a_thread

    def counting(hop: Any) -> Any:
        async def counted(function: Any, *args: Any, **kwargs: Any) -> Any:
            ran.append(getattr(function, "__name__", repr(function)))
            return await hop(function, *args, **kwargs)

        return counted

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting(run_sync))
    monkeypatch.setattr(handlers, "in_a_thread", counting(in_a_thread))
    return ran


def reading_threads(system: Eventkeep, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of each read `system`'s store makes from now on (still made)."""
    dialect: Any = system.shop.recorder.sql  # type: ignore[attr-defined]
    threads: list[str] = []
    read = dialect.read

    def named(sql: str, params: Any = ()) -> Any:
        threads.append(threading.current_thread().name)
        return read(sql, params)

    monkeypatch.setattr(dialect, "read", named)
    return threads


def state(aggregate: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


def test_a_product_not_in_memory_costs_one_statement_and_one_thread_hop(
    two_processes: list[Eventkeep], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its snapshot, its events after that and its data key in one statement (the library's
    repository asked for each, and sealing the next reason fetched the key again in a second
    worker thread), read in the store's own loading thread (the one hop: no anyio thread, no
    `in_a_thread`); what it decides on is what the library would have rebuilt."""
    a, b = two_processes
    product_id = create_product(writer(a), stock=1000)
    for n in range(SNAPSHOT_INTERVAL + 4):  # a snapshot at 100, then events after it
        writer(a).handle(AdjustStock(product_id, -1, f"sale {n}"), CONTEXT)
    assert list(b.shop.snapshots.get(product_id))  # type: ignore[union-attr]
    expected = state(b.shop.repository.get(product_id))  # the library's own rebuild
    threads = reading_threads(b, monkeypatch)
    sent, hops = statements(b, monkeypatch), worker_thread_calls(monkeypatch)

    loaded = b.store.load(product_id, fresh=True)
    assert loaded is not None and state(loaded) == expected
    assert len(sent()) == 1
    b.store.cache.evict([product_id])
    sent().clear()
    threads.clear()
    result = awaited(b, AdjustStock(product_id, -1, "the last one"))

    assert (len(sent()), hops) == (2, [])  # the load above and this one; no seal hop
    assert [name.rsplit("_", 1)[0] for name in threads] == ["eventkeep-aggregate-loads"]
    assert result.version == SNAPSHOT_INTERVAL + 6
    assert stored_stock(a, product_id) == 1000 - SNAPSHOT_INTERVAL - 5
    assert reasons(a, product_id)[-2:] == [f"sale {SNAPSHOT_INTERVAL + 3}", "the last one"]


def test_a_product_not_in_memory_is_loaded_while_every_anyio_thread_is_taken(
    two_processes: list[Eventkeep],
) -> None:
    """The awaited command's load has its own worker threads (the store's loading threads;
    anyio's cost twice the CPU on the event loop per hop): sync routes holding all of
    anyio's threads do not hold it up."""
    a, b = two_processes
    product_id = create_product(writer(a), stock=10)  # not in b's memory
    release = threading.Event()

    async def with_anyio_taken() -> Any:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        taken = asyncio.ensure_future(anyio.to_thread.run_sync(release.wait))
        try:
            return await asyncio.wait_for(
                b.bus.handle_async(AdjustStock(product_id, -1, "sold"), CONTEXT), timeout=30
            )
        finally:
            release.set()
            await taken

    result = asyncio.run(with_anyio_taken())
    assert result.version == 2
    assert stored_stock(a, product_id) == 9


def test_a_user_erased_by_another_process_is_loaded_without_a_key(
    two_processes: list[Eventkeep],
) -> None:
    """The load that finds no key keeps none for sealing (the key it kept before is dropped):
    the erasure holds in the process that had the user in memory."""
    a, b = two_processes
    user_id = register(writer(a))
    writer(b).handle(ChangeUserEmail(user_id, "ada@example.org"), CONTEXT)  # b keeps the key
    writer(a).handle(ErasePersonalData(user_id), CONTEXT)

    with pytest.raises(PersonalDataErased):  # b's stale copy refused, loaded afresh: erased
        awaited(b, ChangeUserEmail(user_id, "ada@example.net"))
    user: Any = b.store.load(user_id, fresh=True)
    assert (user.erased, user.email, user.first_name) == (True, None, None)
    recorder: Any = b.shop.recorder
    with pytest.raises(IntegrityError, match="erased"):  # no key kept: the table is asked
        recorder.personal_data.seal(
            [
                replace(e, originator_version=e.originator_version + 10)
                for e in recorder.select_events(user_id)[:1]
            ]
        )
