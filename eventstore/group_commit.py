"""Group commit: many concurrent appends share one lock, one transaction and one fsync.

Writers hand their append to a committer thread and wait. The committer takes every append
waiting at that moment, opens one transaction holding the store's write lock, reads what the
batch could conflict with (stream versions, unique claims, idempotency keys, tracking), rejects
the conflicting appends (each fails alone, with the library's `IntegrityError` or the port's
error), numbers the rest with contiguous positions, links them into the hash chain and writes
them with one multi-row insert. Because positions are assigned under the write lock, commit
order equals position order: a reader tailing `position > n` can never skip a late commit.

If the write itself still fails on a constraint (a race the pre-check cannot see, such as a
tracking row written outside the lock), the batch is retried one append at a time so that only
the offending append fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from queue import Empty, Full, Queue
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent, Tracking

from eventkeep.commands.ports import (
    ClaimTakenError,
    IdempotencyKeyUsedError,
    IdempotencyRecord,
    UniqueClaim,
)
from eventkeep.eventstore.hashchain import event_hash
from eventkeep.eventstore.records import RecordedEvent
from eventkeep.metrics import GROUP_COMMIT_BATCH, GROUP_COMMIT_REFUSED, GROUP_COMMIT_WAIT


class CommitQueueFull(OperationalError):
    """The committer's queue stayed full for the whole wait: the append was not written
    (the API answers 503 with Retry-After; nothing of it is stored)."""


@dataclass
class Append:
    """One caller's `insert_events`: all of it is written, or none of it."""

    events: Sequence[StoredEvent]
    metadata: dict[str, Any]
    claims: Sequence[UniqueClaim] = ()
    idempotency: IdempotencyRecord | None = None
    tracking: Tracking | None = None
    done: Future[list[int]] = field(default_factory=Future)
    queued_at: float = 0.0  # time.monotonic() when handed to the committer

    @classmethod
    def from_kwargs(cls, events: Sequence[StoredEvent], **kwargs: Any) -> Append:
        """The append of the library's `insert_events(events, **kwargs)`; a keyword it does not
        know is refused (the command layer builds a typed Append: `commands.ports`)."""
        unknown = kwargs.keys() - {"metadata", "claims", "idempotency", "tracking"}
        if unknown:
            raise TypeError(
                f"insert_events got unexpected keyword(s): {', '.join(sorted(unknown))}"
            )
        return cls(
            events=events,
            metadata=dict(kwargs.get("metadata") or {}),
            claims=tuple(kwargs.get("claims") or ()),
            idempotency=kwargs.get("idempotency"),
            tracking=kwargs.get("tracking"),
        )


@dataclass(frozen=True)
class Row:
    """A fully described event row, ready for the insert."""

    position: int
    stream_id: UUID | str
    stream_type: str
    stream_version: int
    event_type: str
    schema_version: int
    recorded_at: datetime
    data: bytes
    metadata: dict[str, Any]
    prev_hash: bytes
    hash: bytes


@dataclass
class StoreState:
    """What the batch may conflict with, read under the write lock."""

    last_position: int
    last_hash: bytes
    taken_versions: set[tuple[str, int]]
    claim_owners: dict[tuple[str, str], UUID]
    used_idempotency_keys: set[str]
    tracking_max: dict[str, int]


@dataclass
class BatchPlan:
    """What one batch transaction writes, and what each append answers."""

    rows: list[Row] = field(default_factory=list)
    claims: dict[tuple[str, str], UUID | None] = field(default_factory=dict)
    idempotency: list[IdempotencyRecord] = field(default_factory=list)
    tracking: list[Tracking] = field(default_factory=list)
    outcomes: list[tuple[Append, list[int] | Exception]] = field(default_factory=list)

    @property
    def writes_anything(self) -> bool:
        return bool(self.rows or self.claims or self.idempotency or self.tracking)


def plan_batch(appends: Sequence[Append], state: StoreState, now: datetime) -> BatchPlan:
    """Decide which appends commit, number their events and link them into the chain."""
    plan = BatchPlan()
    position, prev_hash = state.last_position, state.last_hash
    for append in appends:
        conflict = _conflict(append, state)
        if conflict is not None:
            plan.outcomes.append((append, conflict))
            continue
        positions = []
        for event in append.events:
            position += 1
            row = _row(event, position, prev_hash, append.metadata, now)
            prev_hash = row.hash
            plan.rows.append(row)
            positions.append(position)
            state.taken_versions.add((str(event.originator_id), event.originator_version))
        for claim in append.claims:
            plan.claims[(claim.scope, claim.key)] = claim.owner
            if claim.owner is None:
                state.claim_owners.pop((claim.scope, claim.key), None)
            else:
                state.claim_owners[(claim.scope, claim.key)] = claim.owner
        if append.idempotency is not None:
            record = append.idempotency
            completed = replace(record.result, position=positions[-1] if positions else position)
            plan.idempotency.append(replace(record, result=completed))
            state.used_idempotency_keys.add(record.key)
        if append.tracking is not None:
            plan.tracking.append(append.tracking)
            state.tracking_max[append.tracking.application_name] = append.tracking.notification_id
        plan.outcomes.append((append, positions))
    return plan


def _conflict(append: Append, state: StoreState) -> Exception | None:
    seen: set[tuple[str, int]] = set()
    for event in append.events:
        key = (str(event.originator_id), event.originator_version)
        if key in state.taken_versions or key in seen:
            return IntegrityError(
                f"stream {event.originator_id} already has version {event.originator_version}"
            )
        seen.add(key)
    for claim in append.claims:
        owner = state.claim_owners.get((claim.scope, claim.key))
        if claim.owner is not None and owner is not None and owner != claim.owner:
            return ClaimTakenError(claim.scope, claim.key)
    if append.idempotency is not None and append.idempotency.key in state.used_idempotency_keys:
        return IdempotencyKeyUsedError(append.idempotency.key)
    tracking = append.tracking
    if tracking is not None:
        recorded = state.tracking_max.get(tracking.application_name)
        if recorded is not None and tracking.notification_id <= recorded:
            return IntegrityError(
                f"tracking {tracking.application_name} already at {recorded}, "
                f"refusing {tracking.notification_id}"
            )
    return None


def _row(
    event: StoredEvent, position: int, prev_hash: bytes, metadata: dict[str, Any], now: datetime
) -> Row:
    if isinstance(event, RecordedEvent):
        stream_type, schema_version, recorded_at = (
            event.stream_type,
            event.schema_version,
            event.recorded_at,
        )
    else:  # a plain library event: its topic is all we know of its type
        stream_type, schema_version, recorded_at = "", 1, now
    fields: dict[str, Any] = {
        "position": position,
        "stream_id": event.originator_id,
        "stream_type": stream_type,
        "stream_version": event.originator_version,
        "event_type": event.topic,
        "schema_version": schema_version,
        "recorded_at": recorded_at,
        "data": event.state,
        "metadata": metadata,
    }
    return Row(**fields, prev_hash=prev_hash, hash=event_hash(prev_hash, **fields))


class BatchStorage(Protocol):
    """The backend half of group commit: one locked transaction per batch."""

    def locked_transaction(self) -> AbstractContextManager[BatchTransaction]: ...


class BatchTransaction(Protocol):
    def read_state(self, appends: Sequence[Append]) -> StoreState: ...

    def write(self, plan: BatchPlan) -> None: ...


class GroupCommitter:
    """A committer thread that turns concurrent appends into batch transactions."""

    def __init__(
        self,
        storage: BatchStorage,
        *,
        is_integrity_error: Callable[[BaseException], bool],
        after_commit: Callable[[], None] = lambda: None,
        max_batch_events: int = 2000,
        max_queued: int = 2048,
        queue_wait: float = 1.0,
        name: str = "eventkeep-group-commit",
    ) -> None:
        self._storage = storage
        self._is_integrity_error = is_integrity_error
        self._after_commit = after_commit
        self._max_batch_events = max_batch_events
        # Bounded: under overload writers are refused after `queue_wait`, never queued
        # without end (memory stays bounded, and so does every writer's wait).
        self._queue: Queue[Append | None] = Queue(maxsize=max_queued)
        self._queue_wait = queue_wait
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Lock()
        self._closed = False

    def append(self, append: Append) -> list[int]:
        """Queue an append and wait until its batch has committed (or it was refused)."""
        if self._closed:
            raise RuntimeError("the event store is closed")
        self._ensure_started()
        append.queued_at = time.monotonic()
        try:
            self._queue.put(append, timeout=self._queue_wait)
        except Full:
            GROUP_COMMIT_REFUSED.inc()
            raise CommitQueueFull(
                f"the event store is busy: {self._queue.maxsize} appends already wait"
            ) from None
        return append.done.result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None, timeout=10)
            self._thread.join(timeout=10)

    def _ensure_started(self) -> None:
        if not self._thread.is_alive():
            with self._started:
                if not self._thread.is_alive() and self._thread.ident is None:
                    self._thread.start()

    def _run(self) -> None:
        for batch in self._batches():
            self._commit(batch)

    def _batches(self) -> Iterator[list[Append]]:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, events = [first], len(first.events)
            while events < self._max_batch_events:
                try:
                    more = self._queue.get_nowait()
                except Empty:
                    break
                if more is None:
                    yield batch
                    return
                batch.append(more)
                events += len(more.events)
            yield batch

    def _commit(self, batch: list[Append]) -> None:
        started = time.monotonic()
        GROUP_COMMIT_BATCH.observe(len(batch))
        for append in batch:
            if append.queued_at:
                GROUP_COMMIT_WAIT.observe(started - append.queued_at)
        try:
            with self._storage.locked_transaction() as transaction:
                plan = plan_batch(batch, transaction.read_state(batch), datetime.now(UTC))
                if plan.writes_anything:
                    transaction.write(plan)
        except BaseException as error:
            if len(batch) > 1 and self._is_integrity_error(error):
                for append in batch:
                    self._commit([append])
                return
            failure = IntegrityError(str(error)) if self._is_integrity_error(error) else error
            for append in batch:
                append.done.set_exception(failure)
            return
        if plan.rows:
            self._after_commit()
        for append, outcome in plan.outcomes:
            if isinstance(outcome, Exception):
                append.done.set_exception(outcome)
            else:
                append.done.set_result(outcome)
