"""The stored shape of an event, beyond the four fields the `eventsourcing` library knows.

`RecordedEvent` is what the mapper hands to a recorder; `LoggedEvent` is what a recorder reads
back from the global log. Both stay valid library objects (`StoredEvent`, `Notification`), so
library code and the library's recorder test cases work on them unchanged. The library's
`topic` field holds the catalog's event type.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

from eventsourcing.persistence import Notification, StoredEvent


@dataclass(frozen=True)
class RecordedEvent(StoredEvent):
    stream_type: str
    schema_version: int
    recorded_at: datetime


@dataclass(frozen=True, eq=False)
class LoggedEvent(Notification):
    """One row of the global log, as an auditor or a projector sees it (before upcasting)."""

    stream_type: str
    schema_version: int
    recorded_at: datetime
    metadata: dict[str, Any]
    prev_hash: bytes
    hash: bytes

    @property
    def event_type(self) -> str:
        return self.topic

    @property
    def position(self) -> int:
        return self.id


# A stream as the write path loads it: its latest snapshot (or None) and its events after it.
Stream = tuple[StoredEvent | None, list[StoredEvent]]

R = TypeVar("R")
# The field names of each record class `evolved` has copied (checked once per class).
_FIELDS: dict[type, frozenset[str]] = {}


def evolved(record: R, **changes: Any) -> R:
    """`dataclasses.replace` for the store's records (dataclasses without `__post_init__`,
    `__slots__` or a `cached_property`, frozen or not): the same new object, made without
    running `__init__` again. About three times faster, and the write path replaces every
    event it seals and every append it hands to group commit. Like `replace`, a name that is
    not a field is refused: a misspelt `state=` would otherwise store personal data unsealed."""
    cls = type(record)
    names = _FIELDS.get(cls) or _fields_of(cls)
    if not changes.keys() <= names:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(changes.keys() - names)}")
    clone: Any = object.__new__(cls)
    clone.__dict__.update(vars(record))
    clone.__dict__.update(changes)
    return clone


def _fields_of(cls: type) -> frozenset[str]:
    """The fields of `cls`, once it is known that copying its `__dict__` is `replace`."""
    slotted = any(vars(k).get("__slots__") for k in cls.__mro__)  # fields outside __dict__
    derived = any(  # a value worked out from the old fields, kept in __dict__
        isinstance(v, cached_property) for k in cls.__mro__ for v in vars(k).values()
    )
    if not is_dataclass(cls) or hasattr(cls, "__post_init__") or slotted or derived:
        raise TypeError(f"evolved() cannot copy a {cls.__name__}: use dataclasses.replace")
    names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))
    return names
