"""The global log's promises: every event exactly once, in position order, no skipped late
commits, positions contiguous; appends all-or-nothing; history tamper-evident and append-only.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from eventkeep.commands.messages import CommandResult
from eventkeep.commands.ports import (
    ClaimTakenError,
    IdempotencyKeyUsedError,
    IdempotencyRecord,
    UniqueClaim,
)
from eventkeep.eventstore.hashchain import GENESIS, recomputed_hash
from eventkeep.eventstore.records import RecordedEvent
from tests.eventstore.conftest import MakeRecorder

WRITERS = 8
APPENDS_PER_WRITER = 150


def events_for(stream_id, first_version: int, count: int) -> list[StoredEvent]:
    return [
        RecordedEvent(
            originator_id=stream_id,
            originator_version=first_version + i,
            topic="ProductStockAdjusted",
            state=b'{"delta":1,"reason":"test"}',
            stream_type="Product",
            schema_version=1,
            recorded_at=datetime.now(UTC),
        )
        for i in range(count)
    ]


def test_tailing_reader_sees_every_event_once_in_order(make_recorder: MakeRecorder) -> None:
    """8 writers on two independent committers (as two processes) while a reader tails."""
    writer_stores = [make_recorder(), make_recorder()]
    reader_store = make_recorder()
    rng = random.Random(7)
    sizes = [[rng.randint(1, 3) for _ in range(APPENDS_PER_WRITER)] for _ in range(WRITERS)]
    total = sum(map(sum, sizes))
    seen: list[int] = []
    writers_done = threading.Event()
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            store = writer_stores[number % 2]
            for size in sizes[number]:
                store.insert_events(events_for(uuid4(), 1, size), metadata={"actor": "w"})
        except BaseException as error:
            errors.append(error)

    def tail() -> None:
        last = 0
        while True:
            finished = writers_done.is_set()
            batch = reader_store.select_notifications(last, 200, inclusive_of_start=False)
            seen.extend(n.id for n in batch)
            if batch:
                last = batch[-1].id
            elif finished:
                return

    reader = threading.Thread(target=tail)
    reader.start()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writers_done.set()
    reader.join(timeout=60)
    assert not errors
    assert seen == list(range(1, total + 1))


def test_an_append_is_all_or_nothing_and_fails_alone(make_recorder: MakeRecorder) -> None:
    store = make_recorder()
    hot, other = uuid4(), uuid4()
    store.insert_events(events_for(hot, 1, 1))
    results: dict[str, object] = {}

    def append(name: str, events: list[StoredEvent]) -> None:
        try:
            results[name] = store.insert_events(events)
        except Exception as error:
            results[name] = error

    # "b" conflicts on the hot stream's version 1 but also touches another stream.
    threads = [
        threading.Thread(target=append, args=("a", events_for(hot, 2, 1))),
        threading.Thread(
            target=append, args=("b", events_for(other, 1, 1) + events_for(hot, 1, 1))
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["a"] == [2]
    assert isinstance(results["b"], IntegrityError)
    assert store.select_events(other) == []
    assert [n.id for n in store.select_notifications(None, 10)] == [1, 2]


def test_claims_are_unique_and_released(make_recorder: MakeRecorder) -> None:
    store = make_recorder()
    alice, bob = uuid4(), uuid4()
    claim = UniqueClaim("user_email", "k1", alice)
    store.insert_events(events_for(alice, 1, 1), claims=[claim])
    with pytest.raises(ClaimTakenError):
        store.insert_events(events_for(bob, 1, 1), claims=[UniqueClaim("user_email", "k1", bob)])
    assert store.select_events(bob) == []
    store.insert_events(events_for(alice, 2, 1), claims=[UniqueClaim("user_email", "k1", None)])
    store.insert_events(events_for(bob, 1, 1), claims=[UniqueClaim("user_email", "k1", bob)])


def test_idempotency_record_is_stored_with_its_position(make_recorder: MakeRecorder) -> None:
    store = make_recorder()
    stream = uuid4()
    record = IdempotencyRecord("actor:key", "hash1", CommandResult(stream, 2, 0, created=True))
    positions = store.insert_events(events_for(stream, 1, 2), idempotency=record)
    request_hash, answer = store.find_idempotent("actor:key")
    assert IdempotencyRecord.from_stored("actor:key", request_hash, answer) == IdempotencyRecord(
        "actor:key", "hash1", CommandResult(stream, 2, positions[-1], created=True)
    )
    with pytest.raises(IdempotencyKeyUsedError):
        store.insert_events(events_for(stream, 3, 1), idempotency=record)
    assert store.find_idempotent("other") is None


def test_hash_chain_links_every_event(make_recorder: MakeRecorder) -> None:
    store = make_recorder()
    for _ in range(3):
        store.insert_events(events_for(uuid4(), 1, 2), metadata={"actor": "a", "b": [1]})
    prev = GENESIS
    for event in store.select_notifications(None, 100):
        assert event.prev_hash == prev
        assert event.hash == recomputed_hash(event, prev)
        prev = event.hash


@pytest.mark.parametrize(
    "statement",
    ["UPDATE stored_events SET event_type = 'Forged'", "DELETE FROM stored_events"],
)
def test_history_is_append_only_in_the_database(
    make_recorder: MakeRecorder, statement: str
) -> None:
    store = make_recorder()
    store.insert_events(events_for(uuid4(), 1, 1))
    with pytest.raises(Exception, match="append-only"):  # noqa: SIM117 - driver's own error
        with store.datastore.transaction(commit=True) as cursor:
            cursor.execute(statement)
    assert len(store.select_notifications(None, 10)) == 1
