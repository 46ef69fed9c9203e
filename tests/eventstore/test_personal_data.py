"""Personal data at rest: encrypted with a key per user; erasing destroys the key, so the
history still replays with the stored bytes unchanged while the personal fields read as null."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from eventkeep.api.bootstrap import Wiring
from eventkeep.commands.messages import CommandContext, ErasePersonalData, RegisterUser
from eventkeep.domain.user import User
from eventkeep.eventstore.pii import PII_SECRET, PersonalFields
from eventkeep.eventstore.records import RecordedEvent
from tests.eventstore.stores import drop_postgres_tables, postgres_env

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
    assert b"s3" not in raw.state and b'"title":"t"' in raw.state  # only the told field sealed
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
