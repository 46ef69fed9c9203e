"""Personal data at rest: encrypted with a key per user; erasing destroys the key, so the
history still replays with the stored bytes unchanged while the personal fields read as null."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import InfrastructureFactory, IntegrityError
from eventsourcing.utils import Environment

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import CommandContext, ErasePersonalData, RegisterUser
from eventkeep.domain.user import User
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.pii import (
    MARK,
    PII_SECRET,
    SEALING_KEYS_KEPT,
    OpeningKeys,
    PersonalData,
    PersonalFields,
)
from eventkeep.eventstore.records import RecordedEvent
from tests.eventstore.stores import drop_postgres_tables, postgres_env
from tests.eventstore.test_one_trip import batches

ADA = RegisterUser("Ada@Example.com", "Ada", "Lovelace")


def send(wiring: Wiring, command: Any) -> Any:
    return wiring.handle(command, CommandContext(actor="test", correlation_id="c"))


def stored(wiring: Wiring, stream_id: UUID) -> list[Any]:
    log = wiring.shop.recorder.select_notifications(1, 1000, decrypt=False)  # type: ignore[call-arg]
    return [e for e in log if e.originator_id == stream_id]


def opened(wiring: Wiring, stream_id: UUID) -> list[dict[str, Any]]:
    log = wiring.shop.recorder.select_notifications(1, 1000)
    return [orjson.loads(e.state) for e in log if e.originator_id == stream_id]


def test_personal_fields_are_stored_encrypted_and_read_in_plaintext(wiring: Wiring) -> None:
    user_id = send(wiring, ADA).id

    raw = stored(wiring, user_id)[0].state
    user = wiring.shop.repository.get(user_id)

    assert b"Ada" not in raw and b"Lovelace" not in raw and b"example" not in raw.lower()
    assert opened(wiring, user_id)[0] == {
        "email": "ada@example.com",  # stored normalised (domain.user)
        "first_name": "Ada",
        "last_name": "Lovelace",
    }
    assert isinstance(user, User)
    assert (user.email, user.first_name, user.last_name) == ("ada@example.com", "Ada", "Lovelace")


def test_erasing_destroys_the_key_and_leaves_the_history_intact(wiring: Wiring) -> None:
    user_id = send(wiring, ADA).id
    before = [(e.state, e.hash) for e in stored(wiring, user_id)]

    send(wiring, ErasePersonalData(user_id))

    after = [(e.state, e.hash) for e in stored(wiring, user_id)]
    assert after[: len(before)] == before  # not a byte of history changed
    assert opened(wiring, user_id)[0] == {"email": None, "first_name": None, "last_name": None}
    user = wiring.shop.repository.get(user_id)
    assert isinstance(user, User)
    assert (user.email, user.first_name, user.last_name) == (None, None, None)
    assert user.version == 2


def test_an_erased_email_can_be_registered_again(wiring: Wiring) -> None:
    first = send(wiring, ADA).id
    send(wiring, ErasePersonalData(first))

    second = send(wiring, ADA).id

    assert second != first
    assert opened(wiring, second)[0]["email"] == "ada@example.com"


# --- the store is told which fields are personal ---------------------------------------------

TOLD = PersonalFields({"NoteWritten": frozenset({"secret"})}, erasing_event="NoteForgotten")


def note(stream_id: UUID, version: int, event_type: str, data: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        originator_id=stream_id,
        originator_version=version,
        topic=event_type,
        state=orjson.dumps(data),
        stream_type="Note",
        schema_version=1,
        recorded_at=datetime.now(UTC),
    )


@pytest.fixture(params=["embedded", "distributed"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A store's persistence environment with a secret, and no catalog in sight."""
    if request.param == "embedded":
        env = {
            "PERSISTENCE_MODULE": "eventkeep.eventstore.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "events.db"),
        }
    else:
        drop_postgres_tables()
        env = postgres_env()
    yield {**env, PII_SECRET: "a-deployment-secret-for-the-test"}
    if request.param == "distributed":
        drop_postgres_tables()


def test_the_store_seals_the_fields_it_is_told_and_erases_with_the_event_it_is_told(
    store_env: dict[str, str],
) -> None:
    factory = InfrastructureFactory.construct(Environment("", {**store_env, **TOLD.to_env()}))
    store: Any = factory.application_recorder()
    note_id = uuid4()
    store.insert_events([note(note_id, 1, "NoteWritten", {"secret": "s3", "title": "t"})])

    [raw] = store.select_notifications(None, 10, decrypt=False)
    stored = orjson.loads(raw.state)  # only the told field sealed
    assert stored["secret"].startswith(MARK) and stored["title"] == "t"
    [read] = store.select_notifications(None, 10)
    assert orjson.loads(read.state) == {"secret": "s3", "title": "t"}

    store.insert_events([note(note_id, 2, "NoteForgotten", {})])  # the told erasing event
    [read, _] = store.select_notifications(None, 10)
    assert orjson.loads(read.state) == {"secret": None, "title": "t"}
    factory.close()


def test_a_store_with_a_secret_but_no_personal_fields_refuses_to_open(
    store_env: dict[str, str],
) -> None:
    factory = InfrastructureFactory.construct(Environment("", store_env))
    try:
        with pytest.raises(ValueError, match="PII_FIELDS"):
            factory.application_recorder()
    finally:
        factory.close()


# --- a field sealed under another stream's key ------------------------------------------------

SHARED = PersonalFields(
    {"NoteWritten": frozenset({"secret"}), "NoteShared": frozenset({"secret"})},
    erasing_event="NoteForgotten",
    key_owners={"NoteShared": "author"},
)


def test_a_field_under_another_streams_key_is_erased_with_that_stream(
    store_env: dict[str, str],
) -> None:
    """An order's cancellation reason under its user's key, in the store's own terms: erasing
    the author makes the shared note's secret null; one written after the erasure is stored
    null; one written before the field was sealed (no author named) reads as written."""
    plain = InfrastructureFactory.construct(Environment("", store_env | {PII_SECRET: ""}))
    legacy_id = uuid4()
    plain.application_recorder().insert_events(
        [note(legacy_id, 1, "NoteShared", {"secret": "old", "author": None})]
    )
    plain.close()

    factory = InfrastructureFactory.construct(Environment("", {**store_env, **SHARED.to_env()}))
    store: Any = factory.application_recorder()
    author, shared, later = uuid4(), uuid4(), uuid4()
    store.insert_events([note(author, 1, "NoteWritten", {"secret": "mine"})])
    store.insert_events([note(shared, 1, "NoteShared", {"secret": "s3", "author": str(author)})])
    raw = {e.originator_id: e.state for e in store.select_notifications(None, 10, decrypt=False)}
    assert orjson.loads(raw[shared])["secret"].startswith(MARK)

    def read() -> dict[Any, Any]:
        return {
            e.originator_id: orjson.loads(e.state)["secret"]
            for e in store.select_notifications(None, 10)
            if e.topic != "NoteForgotten"
        }

    assert read() == {legacy_id: "old", author: "mine", shared: "s3"}
    store.insert_events([note(author, 2, "NoteForgotten", {})])
    store.insert_events([note(later, 1, "NoteShared", {"secret": "s4", "author": str(author)})])
    raw = {e.originator_id: e.state for e in store.select_notifications(None, 10, decrypt=False)}
    assert orjson.loads(raw[later])["secret"] is None  # nothing about the erased author is written
    assert read() == {legacy_id: "old", author: None, shared: None, later: None}
    with pytest.raises(IntegrityError, match="erased"):  # the erased stream's own event
        store.insert_events([note(author, 3, "NoteWritten", {"secret": "again"})])
    factory.close()


# --- a new stream's key is stored by its first append ------------------------------------------


def data_key_rows(store: Any, stream_id: UUID) -> int:
    keys = store.personal_data._keys  # the store's own table of wrapped keys
    return len(keys.fetch([str(stream_id)]))


def test_a_stream_made_and_erased_in_one_append_keeps_no_key(store_env: dict[str, str]) -> None:
    """An import may write a person's first event and their erasure in one batch: the key made
    for the first is stored by that batch and deleted by it again (the first batch of a writer
    takes the locked path, the next the append function's one trip in PostgreSQL)."""
    factory = InfrastructureFactory.construct(Environment("", {**store_env, **TOLD.to_env()}))
    store: Any = factory.application_recorder()
    for path in ("locked", "one_trip"):
        taken = batches(path)
        note_id = uuid4()
        store.insert_events(
            [
                note(note_id, 1, "NoteWritten", {"secret": "s3"}),
                note(note_id, 2, "NoteForgotten", {}),
            ]
        )
        if store.sql.has_append_function:
            assert batches(path) == taken + 1
        assert data_key_rows(store, note_id) == 0
        written = [e for e in store.select_notifications(None, 100) if e.originator_id == note_id]
        assert orjson.loads(written[0].state) == {"secret": None}
        with pytest.raises(IntegrityError, match="erased"):  # and nothing of it again
            store.insert_events([note(note_id, 3, "NoteWritten", {"secret": "again"})])
    factory.close()


def test_a_refused_first_event_leaves_its_key_neither_stored_nor_kept(
    store_env: dict[str, str],
) -> None:
    """Two writers make the same stream: the loser's key is not stored, and it forgets it, so
    its next event of that stream is sealed under the winner's key (readable)."""
    env = Environment("", {**store_env, **TOLD.to_env()})
    first, second = InfrastructureFactory.construct(env), InfrastructureFactory.construct(env)
    a: Any = first.application_recorder()
    b: Any = second.application_recorder()
    note_id = uuid4()
    b.insert_events([note(note_id, 1, "NoteWritten", {"secret": "b's"})])

    with pytest.raises(IntegrityError):
        a.insert_events([note(note_id, 1, "NoteWritten", {"secret": "a's"})])
    a.insert_events([note(note_id, 2, "NoteWritten", {"secret": "a's, later"})])

    assert data_key_rows(a, note_id) == 1
    read = [orjson.loads(e.state)["secret"] for e in b.select_notifications(None, 10)]
    assert read == ["b's", "a's, later"]
    first.close()
    second.close()


def test_a_keyed_stream_gets_its_key_with_a_first_event_that_seals_nothing(
    store_env: dict[str, str],
) -> None:
    """A product's first event has no personal field, its later stock adjustments do: with
    its type keyed, the key is stored with the first event, and a later event asks for none."""
    keyed = PersonalFields(
        {"NoteWritten": frozenset({"secret"})}, "NoteForgotten", keyed_streams=frozenset({"Note"})
    )
    factory = InfrastructureFactory.construct(Environment("", {**store_env, **keyed.to_env()}))
    store: Any = factory.application_recorder()
    note_id = uuid4()
    store.insert_events([note(note_id, 1, "NoteOpened", {"title": "t"})])
    assert data_key_rows(store, note_id) == 1
    store.insert_events([note(note_id, 2, "NoteWritten", {"secret": "s3"})])
    assert data_key_rows(store, note_id) == 1
    [_, written] = store.select_notifications(None, 10)
    assert orjson.loads(written.state) == {"secret": "s3"}
    factory.close()


def test_making_a_key_costs_the_same_with_a_writer_full_of_kept_keys(
    store_env: dict[str, str],
) -> None:
    """A writer keeps up to SEALING_KEYS_KEPT keys for sealing. Making the key of a new stream
    once walked all of them (a set minus the dict's keys): about 1 ms per new user at the
    limit, most of what an import or a burst of registrations spent. Measured as a ratio of
    the same work with few keys kept, on one machine in one minute, so load cancels out."""
    factory = InfrastructureFactory.construct(Environment("", {**store_env, **TOLD.to_env()}))
    store: Any = factory.application_recorder()
    personal = store.personal_data

    def seconds_to_seal_new_streams() -> float:
        firsts = [note(uuid4(), 1, "NoteWritten", {"secret": "s"}) for _ in range(200)]
        started = time.perf_counter()
        for event in firsts:
            personal.seal([event])
        personal.forget({str(e.originator_id) for e in firsts})
        return time.perf_counter() - started

    few = min(seconds_to_seal_new_streams() for _ in range(3))
    one_key = AESGCM(bytes(32))
    personal._keep({str(uuid4()): one_key for _ in range(SEALING_KEYS_KEPT)})
    full = min(seconds_to_seal_new_streams() for _ in range(3))

    assert full < 5 * few + 0.05, (few, full)
    factory.close()


# --- a feed's reader keeps the keys it opened with, until it sees their erasure ----------------


class CountingKeys:
    """The store's own table of wrapped keys, noting the streams each fetch asks for."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.asked: list[set[str]] = []

    def fetch(self, stream_ids: Iterable[str]) -> dict[str, bytes]:
        wanted = set(stream_ids)
        self.asked.append(wanted)
        return self._table.fetch(wanted)

    def add_missing(self, wrapped: dict[str, bytes]) -> None:
        self._table.add_missing(wrapped)

    def erased(self, stream_ids: Iterable[str], erasing_event: str) -> set[str]:
        return self._table.erased(stream_ids, erasing_event)


def published(store: Any) -> dict[tuple[UUID, int], dict[str, Any]]:
    """Each event as the relay publishes it (sealed), by stream and version."""
    return {
        (e.originator_id, e.originator_version): to_envelope(e)
        for e in store.select_notifications(None, 100, decrypt=False)
    }


def secrets(envelopes: list[dict[str, Any]]) -> list[Any]:
    return [e["data"].get("secret") for e in envelopes]


def test_a_feed_reader_keeps_a_streams_own_key_until_the_batch_that_erases_it(
    store_env: dict[str, str],
) -> None:
    """A projector opens a stream's later events with the key it kept, asking the table
    nothing; a field sealed under another stream's key is asked of the table every time (that
    stream's erasure may be in a partition another process reads); from the batch holding the
    erasure on, the key is never used again, and `clear()` forgets every kept key."""
    factory = InfrastructureFactory.construct(Environment("", {**store_env, **SHARED.to_env()}))
    store: Any = factory.application_recorder()
    author, shared = uuid4(), uuid4()
    store.insert_events([note(author, 1, "NoteWritten", {"secret": "mine"})])
    store.insert_events([note(shared, 1, "NoteShared", {"secret": "s3", "author": str(author)})])
    table = CountingKeys(store.personal_data._keys)
    reader = OpeningKeys(PersonalData(store_env[PII_SECRET].encode(), table, SHARED))
    feed = published(store)
    own, other = feed[(author, 1)], feed[(shared, 1)]

    assert secrets(reader.open_envelopes([own, other])) == ["mine", "s3"]
    assert table.asked == [{str(author)}]
    assert secrets(reader.open_envelopes([own])) == ["mine"]
    assert len(table.asked) == 1  # kept: the table was not asked
    assert secrets(reader.open_envelopes([other])) == ["s3"]
    assert len(table.asked) == 2  # another stream's event: asked again

    store.insert_events([note(author, 2, "NoteForgotten", {})])
    erasure = published(store)[(author, 2)]
    assert secrets(reader.open_envelopes([own])) == ["mine"]  # the erasure not seen yet
    assert secrets(reader.open_envelopes([own, erasure])) == [None, None]  # seen: never again
    assert secrets(reader.open_envelopes([own])) == [None]
    assert table.asked[-1] == {str(author)}  # asked, and the table has it no more
    assert len(reader) == 0

    later = uuid4()
    store.insert_events([note(later, 1, "NoteWritten", {"secret": "later"})])
    assert secrets(reader.open_envelopes([published(store)[(later, 1)]])) == ["later"]
    reader.clear()  # e.g. partitions assigned to the reader: another may have read them
    asked = len(table.asked)
    assert secrets(reader.open_envelopes([published(store)[(later, 1)]])) == ["later"]
    assert len(table.asked) == asked + 1
    factory.close()


def test_a_feed_reader_leaves_sealed_the_event_types_it_does_not_read(
    store_env: dict[str, str],
) -> None:
    """A stock adjustment's reason, which no read model shows: not opened, no key asked."""
    factory = InfrastructureFactory.construct(Environment("", {**store_env, **SHARED.to_env()}))
    store: Any = factory.application_recorder()
    author, shared = uuid4(), uuid4()
    store.insert_events([note(author, 1, "NoteWritten", {"secret": "mine"})])
    store.insert_events([note(shared, 1, "NoteShared", {"secret": "s3", "author": str(author)})])
    table = CountingKeys(store.personal_data._keys)
    reader = OpeningKeys(PersonalData(store_env[PII_SECRET].encode(), table, SHARED))
    feed = published(store)

    [opened] = reader.open_envelopes([feed[(shared, 1)]], only={"NoteWritten"})

    assert opened == feed[(shared, 1)] and opened["data"]["secret"].startswith(MARK)
    assert table.asked == []
    factory.close()
