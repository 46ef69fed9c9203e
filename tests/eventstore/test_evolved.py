"""`records.evolved`, the write path's `dataclasses.replace`, makes the same object `replace`
makes for every record it is given (every field, so a field added later is covered without
touching this test), and refuses what `replace` refuses or what copying `__dict__` would get
wrong: a name that is not a field (a misspelt `state=` would store personal data unsealed),
a `__post_init__`, `__slots__` or a `cached_property`."""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent, Tracking

from eventkeep.eventstore.group_commit import Append
from eventkeep.eventstore.records import LoggedEvent, RecordedEvent, evolved

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def recorded() -> RecordedEvent:
    return RecordedEvent(uuid4(), 1, "ProductCreated", b'{"a":1}', "Product", 1, NOW)


RECORDS: dict[str, Any] = {
    "stored": StoredEvent(uuid4(), 1, "UserRegistered", b'{"email":"ada@example.com"}'),
    "recorded": recorded(),
    "logged": LoggedEvent(
        uuid4(), 2, "OrderPaid", b"{}", 7, "Order", 2, NOW, {"actor": "a"}, b"p", b"h"
    ),
    "append": Append(events=[recorded()], metadata={"actor": "a"}, queued_at=1.5),
}


def other_value(value: Any) -> Any:
    """A value of the same kind, unequal to `value`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, bytes):
        return value + b"!"
    if isinstance(value, str):
        return value + "!"
    if isinstance(value, datetime):
        return value + timedelta(seconds=1)
    if isinstance(value, Future):
        return Future()
    if isinstance(value, list | tuple):
        return type(value)([*value, recorded()])
    if isinstance(value, dict):
        return {**value, "changed": b"x"}
    if value is None:
        return Tracking("other", 3)
    return uuid4()  # an originator id


def as_fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


@pytest.mark.parametrize("kind", RECORDS)
def test_evolved_is_replace_for_every_field_of_each_record(kind: str) -> None:
    record = RECORDS[kind]
    before = as_fields(record)
    assert evolved(record).__dict__ == dataclasses.replace(record).__dict__
    for name, value in before.items():
        changed = {name: other_value(value)}
        made, expected = evolved(record, **changed), dataclasses.replace(record, **changed)
        assert type(made) is type(expected)
        assert as_fields(made) == as_fields(expected), name
        assert made.__dict__.keys() == expected.__dict__.keys(), name
        assert as_fields(record) == before  # the original is left as it was
    # The append's future is shared (its writer waits on it), as `replace` shares it.
    if isinstance(record, Append):
        assert evolved(record, events=[]).done is record.done


@pytest.mark.parametrize("kind", RECORDS)
def test_evolved_refuses_a_name_that_is_not_a_field(kind: str) -> None:
    record = RECORDS[kind]
    with pytest.raises(TypeError):
        dataclasses.replace(record, stat=b"sealed")
    with pytest.raises(TypeError, match="stat"):
        evolved(record, stat=b"sealed")


@dataclass(frozen=True)
class Derived(StoredEvent):
    size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.state))


@dataclass(frozen=True)
class Cached(StoredEvent):
    @cached_property
    def length(self) -> int:
        return len(self.state)


@dataclass(frozen=True, slots=True)
class Slotted:
    state: bytes


@pytest.mark.parametrize(
    "record",
    [
        Derived(uuid4(), 1, "T", b"{}"),
        Cached(uuid4(), 1, "T", b"{}"),
        Slotted(b"{}"),
        type("NotADataclass", (), {})(),
    ],
    ids=["post_init", "cached_property", "slots", "not_a_dataclass"],
)
def test_evolved_refuses_a_record_whose_dict_is_not_all_of_it(record: Any) -> None:
    if isinstance(record, Cached):
        assert record.length == 2  # worked out from the old state, kept in __dict__
    with pytest.raises(TypeError, match=r"dataclasses\.replace"):
        evolved(record, state=b'{"longer":true}')
