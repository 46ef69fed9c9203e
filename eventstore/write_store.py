"""The command layer's write port (`commands.ports.WriteStore`) over an event-sourced
application (the shop) and its recorder (PostgreSQL or SQLite).

`save` collects the aggregates' pending events, maps them to stored events with the
application's mapper and hands the recorder ONE typed `Append` (events, metadata, unique claims,
idempotency record), so nothing travels as loose keywords through the library. Afterwards it
does what the library's `Application.save` does after recording: the aggregate cache and the
snapshots (the shop has no followers to notify).

Loading asks no database on the happy path: the saved aggregates stay in the write path's own
cache (`eventstore.aggregate_cache`), trusted without a check. An append refused by the
version check (a stale copy, or a concurrent writer) evicts the streams it saved, so the
command bus's retry loads them afresh; so does an append whose outcome is not known. An
aggregate not in memory costs one statement: its latest snapshot, its events after that and
its data key (`EventRecorder.select_streams`), so sealing its next event asks nothing more;
awaited (`load_async`), the loads asked for at the same moment share that statement and one
worker-thread hop (`eventstore.coalesced_reads`), and each is decoded and folded on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, cast, runtime_checkable
from uuid import UUID

import anyio.to_thread
import psycopg
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    PersistenceError,
)

from eventkeep.commands.copies import private_copy
from eventkeep.commands.ports import (
    EventMetadata,
    IdempotencyRecord,
    StreamChangedError,
    UniqueClaim,
)
from eventkeep.eventstore.aggregate_cache import AggregateCache
from eventkeep.eventstore.coalesced_reads import CoalescedReads
from eventkeep.eventstore.group_commit import Append
from eventkeep.eventstore.records import Stream
from eventkeep.metrics import AGGREGATE_LOAD_STREAMS

log = logging.getLogger(__name__)

# Aggregates the write path keeps in memory (per process; least recently used go first).
AGGREGATE_CACHE_SIZE = 10_000


@runtime_checkable
class CommandRecorder(Protocol):
    """What this adapter needs of a recorder (both of eventkeep's have it)."""

    def append(self, append: Append) -> list[int]: ...

    async def append_async(self, append: Append) -> list[int]: ...

    def find_idempotent(self, key: str) -> tuple[str, Any] | None: ...

    def select_streams(
        self, stream_ids: Sequence[UUID], snapshots_table: str | None = None
    ) -> dict[UUID, Stream | Exception]: ...

    def claim_owner(self, scope: str, key: str) -> UUID | None: ...

    def max_notification_id(self) -> int | None: ...


class ApplicationWriteStore:
    """`WriteStore` over `application`, whose recorder must be one of eventkeep's."""

    def __init__(
        self, application: Application[UUID], *, cache_size: int = AGGREGATE_CACHE_SIZE
    ) -> None:
        recorder = application.recorder
        if not isinstance(recorder, CommandRecorder):
            raise TypeError(f"{type(recorder).__name__} cannot record commands' appends")
        self._application = application
        self._recorder: CommandRecorder = recorder
        self.cache = AggregateCache(cache_size)
        # The library's snapshot table (in the recorder's database), read by the same
        # statement as the events (`select_streams`).
        snapshots = application.snapshots
        self._snapshots_table: str | None = (
            getattr(snapshots.recorder, "events_table_name", None) if snapshots else None
        )
        if snapshots is not None and self._snapshots_table is None:
            raise TypeError(f"{type(snapshots.recorder).__name__} names no snapshot table")
        self._loads: CoalescedReads[UUID, Aggregate | None] = CoalescedReads(
            self.load_many, name="eventkeep-aggregate-loads"
        )

    def close(self) -> None:
        """Ends the loading threads (a read on its way ends first)."""
        self._loads.close()

    def load(self, stream_id: UUID, *, fresh: bool = False) -> Aggregate | None:
        if fresh:
            self.cache.evict([stream_id])
        elif (cached := self.cache.get(stream_id)) is not None:
            return cached
        loaded = self.load_many([stream_id])[stream_id]
        if isinstance(loaded, Exception):
            raise loaded
        return loaded

    async def load_async(self, stream_id: UUID) -> Aggregate | None:
        """`load(stream_id, fresh=True)` for a coroutine, read with the other loads asked for
        meanwhile (one statement, one worker-thread hop for all of them)."""
        aggregate = await self._loads.get(stream_id)
        # The one object is the answer of every command that asked: each gets its own copy.
        return None if aggregate is None else private_copy(aggregate)

    def load_many(self, stream_ids: list[UUID]) -> dict[UUID, Aggregate | Exception | None]:
        """The streams as stored now, read in one statement; each decoded and folded on its
        own: a stream that cannot be has its exception as its value (None: no such stream)."""
        streams = self._recorder.select_streams(stream_ids, self._snapshots_table)
        AGGREGATE_LOAD_STREAMS.observe(len(streams))
        mapper = self._application.mapper
        loaded: dict[UUID, Aggregate | Exception | None] = {}
        for stream_id, stream in streams.items():
            if isinstance(stream, Exception):  # its events would not open
                loaded[stream_id] = stream
                continue
            snapshot, events = stream
            try:
                # What the library's repository does with what it reads (three statements
                # there), without `project_aggregate`'s runtime Protocol check per event.
                aggregate: Any = None
                if snapshot is not None:
                    aggregate = cast(Any, mapper.to_domain_event(snapshot)).mutate(aggregate)
                for event in events:
                    aggregate = cast(Any, mapper.to_domain_event(event)).mutate(aggregate)
            except Exception as error:  # this stream's alone: answered as its value
                loaded[stream_id] = error
                continue
            loaded[stream_id] = aggregate if isinstance(aggregate, Aggregate) else None
        return loaded

    def stored_answer(self, idempotency_key: str) -> IdempotencyRecord | None:
        found = self._recorder.find_idempotent(idempotency_key)
        if found is None:
            return None
        request_hash, answer = found
        return IdempotencyRecord.from_stored(idempotency_key, request_hash, answer)

    def claim_owner(self, scope: str, key: str) -> UUID | None:
        return self._recorder.claim_owner(scope, key)

    def cached(self, stream_id: UUID) -> Aggregate | None:
        """A copy of the aggregate from memory; None when it is not there (asks nothing)."""
        return self.cache.get(stream_id)

    def save(
        self,
        aggregates: Sequence[Aggregate],
        *,
        metadata: EventMetadata,
        claims: Sequence[UniqueClaim] = (),
        idempotency: IdempotencyRecord | None = None,
    ) -> int:
        pending, append = self._append_of(aggregates, metadata, claims, idempotency)
        with self._evicting_on_failure(pending):
            positions = self._recorder.append(append)
        self._after_recording(pending)
        return positions[-1] if positions else self._recorder.max_notification_id() or 0

    async def save_async(
        self,
        aggregates: Sequence[Aggregate],
        *,
        metadata: EventMetadata,
        claims: Sequence[UniqueClaim] = (),
        idempotency: IdempotencyRecord | None = None,
    ) -> int:
        """`save` for a coroutine: the commit is awaited (no thread waits for it); what must
        ask the database afterwards (a snapshot, the head of an empty append) runs in a
        worker thread."""
        pending, append = self._append_of(aggregates, metadata, claims, idempotency)
        with self._evicting_on_failure(pending):
            positions = await self._recorder.append_async(append)
        if self._snapshot_due(pending):
            await anyio.to_thread.run_sync(self._after_recording, pending)
        else:
            self._after_recording(pending)
        if positions:
            return positions[-1]
        return await anyio.to_thread.run_sync(self._recorder.max_notification_id) or 0

    def _append_of(
        self,
        aggregates: Sequence[Aggregate],
        metadata: EventMetadata,
        claims: Sequence[UniqueClaim],
        idempotency: IdempotencyRecord | None,
    ) -> tuple[ProcessingEvent[UUID], Append]:
        # What the library's ProcessingEvent.collect_events does, without its runtime
        # Protocol check (~0.1 ms per command on the write path's hottest line).
        pending: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in aggregates:
            pending.events.extend(aggregate.collect_events())
            pending.aggregates[aggregate.id] = aggregate
        mapper = self._application.mapper
        append = Append(
            events=[mapper.to_stored_event(event) for event in pending.events],
            metadata=dict(metadata.as_dict()),
            claims=tuple(claims),
            idempotency=idempotency,
        )
        return pending, append

    @contextmanager
    def _evicting_on_failure(self, pending: ProcessingEvent[UUID]) -> Iterator[None]:
        try:
            yield
        except IntegrityError as error:
            self.cache.evict(list(pending.aggregates))
            raise StreamChangedError(str(error)) from None
        except OperationalError:  # perhaps stored, perhaps not: load afresh next time
            self.cache.evict(list(pending.aggregates))
            raise

    def _snapshot_due(self, pending: ProcessingEvent[UUID]) -> bool:
        intervals = self._application.snapshotting_intervals
        if self._application.snapshots is None or not intervals:
            return False
        for event in pending.events:
            saved = pending.aggregates.get(event.originator_id)
            interval = intervals.get(type(saved)) if saved is not None else None
            if interval is not None and event.originator_version % interval == 0:
                return True
        return False

    def _after_recording(self, pending: ProcessingEvent[UUID]) -> None:
        """The library's `Application.save` after its `_record`: cache, then snapshots."""
        application = self._application
        for aggregate in pending.aggregates.values():
            if isinstance(aggregate, Aggregate):
                self.cache.put(aggregate)
        intervals = application.snapshotting_intervals
        if application.snapshots is None or not intervals:
            return
        for event in pending.events:
            saved = pending.aggregates.get(event.originator_id)
            interval = intervals.get(type(saved)) if saved is not None else None
            if interval is not None and event.originator_version % interval == 0:
                self._take_snapshot(event.originator_id, event.originator_version)

    def _take_snapshot(self, stream_id: UUID, version: int) -> None:
        # The command has committed: its answer must say so. A snapshot only shortens later
        # loads, so one the store cannot take now (a lost connection, a lock or statement
        # timeout) is logged and left to the stream's next interval, never turned into an
        # error for a command that is stored (a client told 503 would send it again).
        try:
            self._application.take_snapshot(stream_id, version=version)
        except (PersistenceError, psycopg.Error) as error:
            log.warning(
                "snapshot of stream %s at version %d not taken (%s); its next interval takes one",
                stream_id,
                version,
                error,
            )
