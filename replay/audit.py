"""What an auditor asks of the history: a stream's events, an entity as it was, whether
anything stored was altered, and the whole log as JSON Lines.

Verification recomputes the hash chain over the bytes as stored (personal data still
sealed), so it needs no data keys, and an erasure — which destroys a key, not a row — leaves
the chain intact. It needs the chain's HMAC key (derived from the deployment secret) and
compares the log with the signed checkpoints (`eventstore.checkpoints`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import IO, Any, Protocol, runtime_checkable
from uuid import UUID

import orjson
from eventsourcing.application import Application

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.checkpoints import Checkpoint, CheckpointFile
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
    last_hash: bytes = GENESIS
    unkeyed_until: int = 0  # the last event of the leading part hashed without the key

    @property
    def intact(self) -> bool:
        return self.altered is None


def verify(
    recorder: Any,
    advance: Callable[[int, int], None] = lambda position, head: None,
    checkpoints: Sequence[Checkpoint] = (),
    *,
    adopt_unkeyed: bool = False,
    resume: Checkpoint | None = None,
) -> Verdict:
    """Walks the whole log in position order, recomputing each hash from the stored fields
    and its predecessor's hash (keyed with the recorder's `chain_key`, when it has one), and
    compares it with every signed checkpoint; stops at the first event whose hash, link or
    position is off, or reports the tail a checkpoint covers and the log lacks.

    Unkeyed hashes (history written before the chain was keyed) are accepted only as the
    log's leading part, up to the first checkpoint's `unkeyed_until`; with no checkpoint,
    only when `adopt_unkeyed` (`eventkeep audit checkpoint`'s first run).

    With `resume` (a checkpoint whose signature verified), the walk starts after its position,
    once the event there still has its hash: the periodic checkpoints' way to extend a signed
    prefix without reading it again (a full verification still reads everything)."""
    key: bytes | None = getattr(recorder, "chain_key", None)
    for checkpoint in checkpoints:
        if not checkpoint.valid:
            return Verdict(0, 0, _missing(checkpoint.position, "a checkpoint's signature fails"))
    unkeyed_until: int | None = (
        checkpoints[0].unkeyed_until if checkpoints else (None if adopt_unkeyed else 0)
    )
    signed = {checkpoint.position: checkpoint for checkpoint in checkpoints}
    head = recorder.max_notification_id() or 0
    prev_hash, expected, checked, keyed_seen, last_unkeyed = GENESIS, 1, 0, False, 0
    if resume is not None:
        found = recorder.select_notifications(resume.position, 1, decrypt=False)
        if not found:
            tail = (
                f"the log ends at {head}, but the checkpoint signed at {resume.time} covers "
                f"position {resume.position}: events were removed from the tail"
            )
            return Verdict(0, head, _missing(head + 1, tail))
        if found[0].id != resume.position or found[0].hash != resume.hash:
            differs = f"it differs from the checkpoint signed at {resume.time}"
            return Verdict(0, resume.position - 1, _named(found[0], resume.position, differs))
        prev_hash, expected = resume.hash, resume.position + 1
    for event in _log(recorder, decrypt=False, start=expected - 1):
        problem = None
        if event.id != expected:
            problem = f"position {expected} is missing (the next stored is {event.id})"
        elif event.prev_hash != prev_hash:
            problem = "its link to the previous event does not match that event's hash"
        elif recomputed_hash(event, prev_hash, key) == event.hash:
            keyed_seen = key is not None
        elif (
            key is not None
            and not keyed_seen
            and (unkeyed_until is None or event.id <= unkeyed_until)
            and recomputed_hash(event, prev_hash) == event.hash
        ):
            last_unkeyed = event.id
        elif key is not None and recomputed_hash(event, prev_hash) == event.hash:
            problem = (
                "its hash was computed without the chain's key (a chain recomputed by someone "
                "without it, or history never adopted: see `eventkeep audit checkpoint`)"
            )
        else:
            problem = "its stored content does not match its hash"
        if problem is None and (mark := signed.get(event.id)) and mark.hash != event.hash:
            problem = f"its hash differs from the checkpoint signed at {mark.time}"
        if problem is not None:
            return Verdict(checked, expected - 1, _named(event, expected, problem), prev_hash)
        prev_hash, expected, checked = event.hash, expected + 1, checked + 1
        if checked % PAGE == 0:
            advance(event.id, head)
    advance(expected - 1, head)
    beyond = [c for c in checkpoints if c.position > expected - 1]
    if beyond:
        mark = max(beyond, key=lambda c: c.position)
        problem = (
            f"the log ends at {expected - 1}, but the checkpoint signed at {mark.time} covers "
            f"position {mark.position}: events were removed from the tail"
        )
        return Verdict(checked, expected - 1, _missing(expected, problem), prev_hash)
    return Verdict(checked, expected - 1, None, prev_hash, last_unkeyed)


def verify_against(
    recorder: Any,
    checkpoints: CheckpointFile | None,
    advance: Callable[[int, int], None] = lambda position, head: None,
) -> Verdict:
    """What `eventkeep audit verify` and `POST /v1/audit/verify` both answer: the whole chain
    walked with its key and compared with every signed checkpoint of the file (None: a
    deployment without one; only the key is checked)."""
    return verify(recorder, advance, checkpoints.read() if checkpoints is not None else ())


def checkpoint(
    recorder: Any, checkpoints: CheckpointFile, *, periodic: bool = False
) -> tuple[Verdict, Checkpoint | None]:
    """Verifies the log against the key and the checkpoints so far, then, if intact, signs
    its head into the file (the first run adopts the unkeyed leading part, if any).

    `periodic` (what a long-running process writes by itself): only the events after the
    newest checkpoint are verified, and unkeyed history is never adopted (that stays the
    operator's decision, `eventkeep audit checkpoint`)."""
    existing = checkpoints.read()
    resume = max(existing, key=lambda c: c.position) if periodic and existing else None
    verdict = verify(
        recorder, checkpoints=existing, adopt_unkeyed=not existing and not periodic, resume=resume
    )
    if not verdict.intact:
        return verdict, None
    unkeyed = existing[0].unkeyed_until if existing else verdict.unkeyed_until
    return verdict, checkpoints.append(verdict.last_position, verdict.last_hash, unkeyed)


def _missing(position: int, problem: str) -> dict[str, Any]:
    return {
        "position": position,
        "stream_id": None,
        "stream_version": None,
        "event_type": None,
        "problem": problem,
    }


def _named(event: LoggedEvent, position: int, problem: str) -> dict[str, Any]:
    return {
        "position": position,
        "stream_id": str(event.originator_id),
        "stream_version": event.originator_version,
        "event_type": event.topic,
        "problem": problem,
    }


def _log(recorder: Any, *, decrypt: bool = True, start: int = 0) -> Iterator[LoggedEvent]:
    """The log after position `start`, page by page."""
    position = start
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
