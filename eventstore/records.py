"""The stored shape of an event, beyond the four fields the `eventsourcing` library knows.

`RecordedEvent` is what the mapper hands to a recorder; `LoggedEvent` is what a recorder reads
back from the global log. Both stay valid library objects (`StoredEvent`, `Notification`), so
library code and the library's recorder test cases work on them unchanged. The library's
`topic` field holds the catalog's event type.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
