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

The truth about a commit: when the connection fails after the batch's writes were sent (the
COMMIT may or may not have reached the server), the committer asks the store, on a new
connection and under the same write lock (so a commit still in flight has ended), whether the
batch's last row is there with its hash. Found: every append of the batch succeeded. Absent:
none was written and each waiter gets `CommitNotWritten` (safe to retry). No answer within
`verify_timeout`: `CommitOutcomeUnknown` (the append may be stored; only a retry under the same
idempotency key is safe). A failure before the writes were sent is always `CommitNotWritten`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from queue import Empty, Full, Queue
from typing import Any, NamedTuple, Protocol
from uuid import UUID

import anyio.to_thread
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent, Tracking

from eventkeep.commands.ports import (
    ClaimTakenError,
    IdempotencyKeyUsedError,
    IdempotencyRecord,
    UniqueClaim,
)
from eventkeep.eventstore.hashchain import ChainLinker, canonical_metadata
from eventkeep.eventstore.records import RecordedEvent
from eventkeep.metrics import (
    GROUP_COMMIT_BATCH,
    GROUP_COMMIT_PATH,
    GROUP_COMMIT_REFUSED,
    GROUP_COMMIT_VERIFIED,
    GROUP_COMMIT_WAIT,
)

log = logging.getLogger(__name__)


class CommitQueueFull(OperationalError):
    """The committer's queue stayed full for the whole wait: the append was not written
    (the API answers 503 with Retry-After; nothing of it is stored)."""


class CommitNotWritten(OperationalError):
    """The connection failed and the store was asked afterwards: nothing of the append is
    stored (retrying it is safe)."""


class CommitOutcomeUnknown(OperationalError):
    """The connection failed while the batch was committing and the store could not be asked
    within the bound: the append may or may not be stored (API: 503 COMMIT_OUTCOME_UNKNOWN)."""


class CommitterDied(OperationalError):
    """The committer thread failed outside a batch; the append was not written."""


@dataclass
class Append:
    """One caller's `insert_events`: all of it is written, or none of it."""

    events: Sequence[StoredEvent]
    metadata: dict[str, Any]
    claims: Sequence[UniqueClaim] = ()
    idempotency: IdempotencyRecord | None = None
    tracking: Tracking | None = None
    # Data keys made for the append's new streams (`eventstore.pii`): stream id -> wrapped
    # key, inserted with its events (a key already stored refuses the append).
    data_keys: Mapping[str, bytes] = field(default_factory=dict)
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


class Row(NamedTuple):
    """A fully described event row, ready for the insert (a named tuple: one is made for
    every event of a batch, about four times faster than a frozen dataclass)."""

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
    data_keys: dict[str, bytes] = field(default_factory=dict)
    outcomes: list[tuple[Append, list[int] | Exception]] = field(default_factory=list)

    @property
    def writes_anything(self) -> bool:
        return bool(self.rows or self.claims or self.idempotency or self.tracking or self.data_keys)


def plan_batch(
    appends: Sequence[Append], state: StoreState, now: datetime, key: bytes | None = None
) -> BatchPlan:
    """Decide which appends commit, number their events and link them into the chain (keyed
    with `key`: `eventstore.hashchain`)."""
    plan = BatchPlan()
    position, prev_hash = state.last_position, state.last_hash
    linker = ChainLinker(key)
    for append in appends:
        versions = [(str(e.originator_id), e.originator_version) for e in append.events]
        conflict = _conflict(append, versions, state)
        if conflict is not None:
            plan.outcomes.append((append, conflict))
            continue
        positions = []
        metadata = canonical_metadata(append.metadata)  # hashed with each of its events
        for event, version in zip(append.events, versions, strict=True):
            position += 1
            stream = version[0]
            row = _row(event, stream, position, prev_hash, append.metadata, metadata, now, linker)
            prev_hash = row.hash
            plan.rows.append(row)
            positions.append(position)
            state.taken_versions.add(version)
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
        plan.data_keys.update(append.data_keys)
        if append.tracking is not None:
            plan.tracking.append(append.tracking)
            state.tracking_max[append.tracking.application_name] = append.tracking.notification_id
        plan.outcomes.append((append, positions))
    return plan


def _conflict(
    append: Append, versions: list[tuple[str, int]], state: StoreState
) -> Exception | None:
    """Why `append` (whose events are `versions`: stream id, version) cannot commit."""
    seen: set[tuple[str, int]] = set()
    for key in versions:
        if key in state.taken_versions or key in seen:
            return IntegrityError(f"stream {key[0]} already has version {key[1]}")
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
    event: StoredEvent,
    stream: str,
    position: int,
    prev_hash: bytes,
    metadata: dict[str, Any],
    canonical: bytes,
    now: datetime,
    linker: ChainLinker,
) -> Row:
    """The event's row (`stream`: its stream id as text, `canonical`: the metadata's
    `canonical_metadata`, both made once by the caller; `linker`: the batch's)."""
    if isinstance(event, RecordedEvent):
        stream_type, schema_version, recorded_at = (
            event.stream_type,
            event.schema_version,
            event.recorded_at,
        )
    else:  # a plain library event: its topic is all we know of its type
        stream_type, schema_version, recorded_at = "", 1, now
    hash = linker.hash(
        prev_hash,
        position=position,
        stream_id=stream,
        stream_type=stream_type,
        stream_version=event.originator_version,
        event_type=event.topic,
        schema_version=schema_version,
        recorded_at=recorded_at,
        data=event.state,
        metadata=canonical,
    )
    return Row(
        position,
        event.originator_id,
        stream_type,
        event.originator_version,
        event.topic,
        schema_version,
        recorded_at,
        event.state,
        metadata,
        prev_hash,
        hash,
    )


@dataclass(frozen=True)
class Head:
    """The log's last position and hash, as this committer last saw them."""

    position: int
    hash: bytes


class BatchStorage(Protocol):
    """The backend half of group commit: one locked transaction per batch."""

    def locked_transaction(self) -> AbstractContextManager[BatchTransaction]: ...

    @property
    def has_one_trip(self) -> bool:
        """Whether `one_trip` exists here (else every batch takes `locked_transaction`)."""
        ...

    def one_trip(self) -> AbstractContextManager[Callable[[BatchPlan, Head], bool]]:
        """A connection checked to be open, with nothing sent yet; the callable sends, in one
        round trip, the write lock and `plan` (made on `head`, with no stored state) and
        commits, writing it only if the log still ends at `head` and none of its versions,
        claims or idempotency keys is taken; it answers whether it wrote (False: nothing)."""
        ...

    def landed(self, position: int, hash: bytes, timeout: float) -> bool:
        """Whether the log holds `hash` at `position`, asked on a new connection once any
        batch holding the write lock has ended; raises when the store cannot be asked
        (`timeout`: the longest wait for a connection and the lock)."""
        ...


class BatchTransaction(Protocol):
    def read_state(self, appends: Sequence[Append]) -> StoreState: ...

    def write(self, plan: BatchPlan) -> None: ...


class GroupCommitter:
    """A committer thread that turns concurrent appends into batch transactions.

    Every wait is bounded: a writer waits `queue_wait` for room in the queue
    (`CommitQueueFull`), then `result_wait` for its answer: still queued by then, it is
    withdrawn (`CommitNotWritten`); already being committed, `CommitOutcomeUnknown`. A failing
    after-commit step is logged (the batch did commit); if the thread dies anyway, the waiters
    of its batch get `CommitterDied` and a new thread takes over the queue."""

    def __init__(
        self,
        storage: BatchStorage,
        *,
        is_integrity_error: Callable[[BaseException], bool],
        after_commit: Callable[[], None] = lambda: None,
        max_batch_events: int = 2000,
        max_queued: int = 2048,
        queue_wait: float = 1.0,
        result_wait: float = 60.0,
        verify_timeout: float = 10.0,
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
        self._result_wait = result_wait
        self._verify_timeout = verify_timeout
        self._name = name
        self.chain_key: bytes | None = None  # the hash chain's HMAC key (set by the store)
        # Where this committer's last batch left the log: the next batch is planned on it
        # and written in one round trip while no other process appended (`_commit`).
        self._head: Head | None = None
        self._one_trip = storage.has_one_trip
        self._thread = self._new_thread()
        self._started = threading.Lock()
        self._closed = False

    def append(self, append: Append) -> list[int]:
        """Queue an append and wait until its batch has committed (or it was refused)."""
        self._put(append)
        try:
            return append.done.result(timeout=self._result_wait)
        except FutureTimeout:
            raise self._timed_out(append) from None

    async def append_async(self, append: Append) -> list[int]:
        """`append` for a coroutine: no thread waits for the commit (the committer's answer
        wakes the event loop), so a process holds as many appends in flight as it has
        requests, and batches grow with load. The same bounds and answers as `append`."""
        try:
            self._put(append, wait=False)
        except Full:  # only under overload: wait for room in a worker thread, as `append` does
            await anyio.to_thread.run_sync(self._put, append)
        try:
            return await _answer_within(append.done, self._result_wait)
        except TimeoutError:
            raise self._timed_out(append) from None

    def _put(self, append: Append, *, wait: bool = True) -> None:
        """Queues `append`, waiting up to `queue_wait` for room (`wait`: else `Full` at once)."""
        if self._closed:
            raise RuntimeError("the event store is closed")
        self._ensure_started()
        append.queued_at = time.monotonic()
        if not wait:
            self._queue.put_nowait(append)
            return
        try:
            self._queue.put(append, timeout=self._queue_wait)
        except Full:
            GROUP_COMMIT_REFUSED.inc()
            raise CommitQueueFull(
                f"the event store is busy: {self._queue.maxsize} appends already wait"
            ) from None

    def _timed_out(self, append: Append) -> OperationalError:
        """What a writer whose answer did not come within `result_wait` is told."""
        if append.done.cancel():  # still queued: the committer will skip it
            return CommitNotWritten(
                f"no commit within {self._result_wait:g}s; the append was withdrawn"
            )
        return CommitOutcomeUnknown(
            f"the append's commit did not end within {self._result_wait:g}s"
        )

    def append_all(self, appends: Iterable[Append], window: int = 1024) -> int:
        """Queues appends in their order without waiting for each commit (up to `window`
        unanswered): the committer writes them in that order, many per transaction. Waits
        for every answer; raises the first refusal (the appends before it are written).
        Returns the number of events written."""
        pending: deque[Append] = deque()
        written = 0

        def settle(append: Append) -> int:
            try:
                return len(append.done.result(timeout=self._result_wait))
            except FutureTimeout:
                raise CommitOutcomeUnknown(
                    f"an append's commit did not end within {self._result_wait:g}s"
                ) from None

        if self._closed:
            raise RuntimeError("the event store is closed")
        self._ensure_started()
        try:
            for append in appends:
                if len(pending) >= window:
                    written += settle(pending.popleft())
                append.queued_at = time.monotonic()
                self._queue.put(append, timeout=self._result_wait)
                pending.append(append)
            while pending:
                written += settle(pending.popleft())
        finally:
            for append in pending:  # after a refusal: the rest not begun is withdrawn
                append.done.cancel()
        return written

    def set_timeouts(
        self, *, result_wait: float | None = None, verify_timeout: float | None = None
    ) -> None:
        """The longest wait for an append's answer, and for finding out whether a batch whose
        connection failed while committing is stored."""
        if result_wait is not None:
            self._result_wait = result_wait
        if verify_timeout is not None:
            self._verify_timeout = verify_timeout

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None, timeout=10)
            self._thread.join(timeout=10)

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=self._name, daemon=True)

    def _ensure_started(self) -> None:
        if not self._thread.is_alive():
            with self._started:
                if not self._thread.is_alive():
                    if self._thread.ident is not None:  # it died: a new one takes over
                        self._thread = self._new_thread()
                    self._thread.start()

    def _run(self) -> None:
        batch: list[Append] = []
        try:
            for batch in self._batches():
                self._commit(batch)
        except BaseException as error:
            log.exception("the group committer failed; a new one takes over")
            for append in batch:
                if not append.done.done():
                    append.done.set_exception(CommitterDied(f"the committer failed: {error!r}"))
            if not self._closed:
                with self._started:
                    self._thread = self._new_thread()
                    self._thread.start()

    def _batches(self) -> Iterator[list[Append]]:
        while True:
            first = self._take(self._queue.get())
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
                if self._take(more) is None:
                    continue  # withdrawn by its writer
                batch.append(more)
                events += len(more.events)
            yield batch

    def _take(self, append: Append | None) -> Append | None:
        """The queued append, now being committed (its writer can no longer withdraw it);
        None for the end of the queue and for an append its writer withdrew."""
        while append is not None and not append.done.set_running_or_notify_cancel():
            append = self._queue.get()
        return append

    def _commit(self, batch: list[Append], *, again: bool = True) -> None:
        """Commits `batch`; `again`: a connection that fails before anything was sent is
        replaced once (a connection the server dropped while idle, e.g. at its restart)."""
        started = time.monotonic()
        GROUP_COMMIT_BATCH.observe(len(batch))
        for append in batch:
            if append.queued_at:
                GROUP_COMMIT_WAIT.observe(started - append.queued_at)
        plan: BatchPlan | None = None
        sent = False
        head, self._head = self._head, None  # unknown again until this batch has ended
        try:
            if head is not None and self._one_trip and not any(a.tracking for a in batch):
                # One round trip while no other process appended since our last batch.
                with self._storage.one_trip() as send:
                    plan = plan_batch(batch, state_at(head), datetime.now(UTC), self.chain_key)
                    sent = True
                    if send(plan, head):
                        GROUP_COMMIT_PATH.labels("one_trip").inc()
                        self._answer(plan, _head_after(plan, head))
                        return
                GROUP_COMMIT_PATH.labels("moved").inc()
                plan, sent = None, False  # nothing written: the locked path decides
            GROUP_COMMIT_PATH.labels("locked").inc()
            with self._storage.locked_transaction() as transaction:
                state = transaction.read_state(batch)
                head = Head(state.last_position, state.last_hash)
                plan = plan_batch(batch, state, datetime.now(UTC), self.chain_key)
                if plan.writes_anything:
                    sent = True
                    transaction.write(plan)
        except BaseException as error:
            if len(batch) > 1 and self._is_integrity_error(error):
                for append in batch:
                    self._commit_again(append)
                return
            if self._is_integrity_error(error):
                failure: BaseException = IntegrityError(str(error))
            elif sent and plan is not None and _is_connection_error(error):
                verdict = self._landed(plan, error)
                if verdict is None:
                    self._answer(plan)
                    return
                failure = verdict
            elif _is_connection_error(error) and again and not sent:
                self._commit(batch, again=False)
                return
            elif _is_connection_error(error):
                failure = CommitNotWritten(f"nothing was written: {error}")
                failure.__cause__ = error
            else:
                failure = error
            for append in batch:
                append.done.set_exception(failure)
            return
        self._answer(plan, _head_after(plan, head))

    def _commit_again(self, append: Append) -> None:
        """One append of a batch that failed on a constraint, committed on its own."""
        if append.done.done():
            return
        self._commit([append])

    def _answer(self, plan: BatchPlan, head: Head | None = None) -> None:
        self._head = head
        if plan.rows:
            try:
                self._after_commit()
            except Exception:  # the batch committed: its writers are told so all the same
                log.exception("the step after a commit failed")
        for append, outcome in plan.outcomes:
            if isinstance(outcome, Exception):
                append.done.set_exception(outcome)
            else:
                append.done.set_result(outcome)

    def _landed(self, plan: BatchPlan, error: BaseException) -> Exception | None:
        """After a connection failure while committing `plan`: None when the batch is stored,
        else the error its writers get (`CommitNotWritten` or `CommitOutcomeUnknown`)."""
        if not plan.rows:
            return CommitOutcomeUnknown(f"the connection failed while committing: {error}")
        last = plan.rows[-1]
        deadline = time.monotonic() + self._verify_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if self._storage.landed(last.position, last.hash, max(remaining, 1.0)):
                    GROUP_COMMIT_VERIFIED.labels("committed").inc()
                    log.warning(
                        "the connection failed after a commit was sent; it is stored (%s)", error
                    )
                    return None
                GROUP_COMMIT_VERIFIED.labels("not_written").inc()
                return CommitNotWritten(f"the commit did not land: {error}")
            except Exception as asking:
                if time.monotonic() + 0.2 >= deadline:
                    GROUP_COMMIT_VERIFIED.labels("unknown").inc()
                    return CommitOutcomeUnknown(
                        f"the connection failed while committing ({error}) and the store "
                        f"could not be asked within {self._verify_timeout:g}s ({asking})"
                    )
                time.sleep(0.2)


async def _answer_within(done: Future[list[int]], seconds: float) -> list[int]:
    """The committer's answer, awaited for at most `seconds` (TimeoutError after). Neither
    the timeout nor the waiter's cancellation cancels `done`: the caller decides whether the
    append is withdrawn. What `wait_for(shield(wrap_future(done)))` does, with one future
    and one timer instead of four futures and their callbacks (3 % of an API worker's CPU)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[list[int]] = loop.create_future()

    def settle(_: Future[list[int]]) -> None:  # on the event loop
        if answer.done():  # timed out, or its waiter was cancelled
            return
        if done.cancelled():  # withdrawn (the committer is closing)
            answer.cancel()
        elif (error := done.exception()) is not None:
            answer.set_exception(error)
        else:
            answer.set_result(done.result())

    def expire() -> None:
        if not answer.done():
            answer.set_exception(TimeoutError())

    def answered(_: Future[list[int]]) -> None:  # in the committer's thread, or here
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, done)

    timer = loop.call_later(seconds, expire)
    done.add_done_callback(answered)
    try:
        return await answer
    finally:
        timer.cancel()


def state_at(head: Head) -> StoreState:
    """What a batch is planned on when the log is taken to end at `head` and nothing it
    could conflict with is stored (the append function checks that, else writes nothing)."""
    return StoreState(head.position, head.hash, set(), {}, set(), {})


def _head_after(plan: BatchPlan, head: Head | None) -> Head | None:
    if not plan.rows:
        return head
    return Head(plan.rows[-1].position, plan.rows[-1].hash)


def _is_connection_error(error: BaseException) -> bool:
    """A lost or refused connection (the driver's OperationalError / InterfaceError, or the
    library's), not a refusal of the statement."""
    if isinstance(error, OperationalError):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"OperationalError", "InterfaceError"}) and not names & {
        "IntegrityError",
        "DataError",
        "ProgrammingError",
    }
