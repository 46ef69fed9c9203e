"""What an auditor asks of the history: a stream's events, an entity as it was, whether
anything stored was altered, and the whole log as JSON Lines.

Verification recomputes the hash chain over the bytes as stored (personal data still
sealed), so it needs no keys, and an erasure — which destroys a key, not a row — leaves the
chain intact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import IO, Any, Protocol, runtime_checkable
from uuid import UUID

import orjson
from eventsourcing.application import Application

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.hashchain import GENESIS, recomputed_hash
from eventkeep.eventstore.records import LoggedEvent

PAGE = 5000


@runtime_checkable
class StreamHistories(Protocol):
    """A recorder that answers a stream's events as logged (both of eventkeep's stores)."""

    def stream_history(self, stream_id: UUID | str) -> list[LoggedEvent]: ...


def _stream_history(shop: Application, stream_id: UUID) -> list[LoggedEvent]:
    recorder = shop.recorder
    if not isinstance(recorder, StreamHistories):
        raise TypeError(f"{type(recorder).__name__} keeps no stream histories")
    return recorder.stream_history(stream_id)


def history(shop: Application, stream_id: UUID) -> list[dict[str, Any]]:
    """Every event of the stream, upcast, with its metadata, position and hashes."""
    return [
        upcast(to_envelope(event, with_hashes=True)) for event in _stream_history(shop, stream_id)
    ]


def state_as_of(
    shop: Application, stream_id: UUID, *, version: int | None = None, at: datetime | None = None
) -> dict[str, Any] | None:
    """The entity at `version`, or as it was at the moment `at`; None if it did not exist."""
    events = _stream_history(shop, stream_id)
    if at is not None:
        events = [event for event in events if event.recorded_at <= at]
    if version is not None:
        events = [event for event in events if event.originator_version <= version]
    if not events:
        return None
    aggregate: object = shop.repository.get(stream_id, version=events[-1].originator_version)
    state = {
        name: _plain(value)
        for name, value in vars(aggregate).items()
        if not name.startswith("_") and name not in ("pending_events",)
    }
    return {
        "id": str(stream_id),
        "stream_type": events[-1].stream_type,
        "version": events[-1].originator_version,
        "as_of": events[-1].recorded_at.isoformat(),
        "state": state,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Verdict:
    """The outcome of walking the chain: `altered` names the first bad event, if any."""

    checked: int
    last_position: int
    altered: dict[str, Any] | None

    @property
    def intact(self) -> bool:
        return self.altered is None


def verify(
    recorder: Any, advance: Callable[[int, int], None] = lambda position, head: None
) -> Verdict:
    """Walks the whole log in position order, recomputing each hash from the stored fields
    and its predecessor's hash; stops at the first event whose hash, link or position is off."""
    head = recorder.max_notification_id() or 0
    prev_hash, expected, checked = GENESIS, 1, 0
    for event in _log(recorder, decrypt=False):
        problem = None
        if event.id != expected:
            problem = f"position {expected} is missing (the next stored is {event.id})"
        elif event.prev_hash != prev_hash:
            problem = "its link to the previous event does not match that event's hash"
        elif recomputed_hash(event, prev_hash) != event.hash:
            problem = "its stored content does not match its hash"
        if problem is not None:
            return Verdict(checked, expected - 1, _named(event, expected, problem))
        prev_hash, expected, checked = event.hash, expected + 1, checked + 1
        if checked % PAGE == 0:
            advance(event.id, head)
    advance(expected - 1, head)
    return Verdict(checked, expected - 1, None)


def _named(event: LoggedEvent, position: int, problem: str) -> dict[str, Any]:
    return {
        "position": position,
        "stream_id": str(event.originator_id),
        "stream_version": event.originator_version,
        "event_type": event.topic,
        "problem": problem,
    }


def _log(recorder: Any, *, decrypt: bool = True) -> Iterator[LoggedEvent]:
    position = 0
    while page := recorder.select_notifications(
        position, PAGE, inclusive_of_start=False, decrypt=decrypt
    ):
        yield from page
        position = page[-1].id


def export(
    recorder: Any,
    out: IO[bytes],
    *,
    upcasting: bool = False,
    advance: Callable[[int], None] = lambda position: None,
) -> int:
    """The whole log as JSON Lines in position order, with hashes; as recorded (stored
    schema versions) unless `upcasting`. Streams page by page: memory stays flat."""
    written, position = 0, 0
    for event in _log(recorder):
        envelope = to_envelope(event, with_hashes=True)
        out.write(orjson.dumps(upcast(envelope) if upcasting else envelope) + b"\n")
        written, position = written + 1, event.id
        if written % PAGE == 0:
            advance(position)
    if written % PAGE:
        advance(position)  # the last page too: progress ends at the last event
    return written
