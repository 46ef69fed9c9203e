"""The recorder core: everything the PostgreSQL and SQLite event stores do, written once.

A recorder keeps the global log (`<prefix>events`) and its side tables (unique claims,
idempotency records, the data keys of `eventstore.pii`), reads streams and the log, and writes
through group commit (`eventstore.group_commit`). What differs between the stores is their
`Dialect` (`eventstore.postgres`, `eventstore.sqlite`): how a name is quoted, how a list of
values is passed (PostgreSQL arrays, SQLite value lists), how values are encoded and decoded,
how a connection is taken for a read or a write, and how the write lock of a batch is held.
All SQL here is written with `%s` placeholders; the SQLite dialect rewrites them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, cast
from uuid import UUID

import anyio.to_thread
import orjson
from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    IntegrityError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
)
from eventsourcing.utils import Environment

from eventkeep.eventstore.group_commit import (
    Append,
    BatchPlan,
    GroupCommitter,
    Head,
    Row,
    StoreState,
    plan_batch,
    state_at,
)
from eventkeep.eventstore.hashchain import GENESIS, chain_key
from eventkeep.eventstore.migrations import (
    Migration,
    Schema,
    SchemaDatabase,
    SchemaStatus,
    check,
    event_store_schema,
    migrate,
    status,
)
from eventkeep.eventstore.pii import PII_SECRET, KeysNotKept, PersonalData, PersonalFields
from eventkeep.eventstore.records import LoggedEvent, RecordedEvent, Stream, evolved
from eventkeep.eventstore.subscription import PollingSubscription

E = TypeVar("E", bound=StoredEvent)
R = TypeVar("R", ApplicationRecorder, ProcessRecorder)

# Column types the dialects know how to pass and read.
ColumnType = Literal["uuid", "bigint", "int", "text", "timestamptz", "bytea", "jsonb"]

EVENT_COLUMNS = (
    "position, stream_id, stream_version, stream_type, event_type, schema_version, "
    "recorded_at, data, metadata, prev_hash, hash"
)
EVENT_TYPES: tuple[ColumnType, ...] = (
    "bigint",
    "uuid",
    "bigint",
    "text",
    "text",
    "int",
    "timestamptz",
    "bytea",
    "jsonb",
    "bytea",
    "bytea",
)


class Argument(NamedTuple):
    """One argument of a server-side function: its SQL type (e.g. `uuid[]`) and value (a
    named tuple: a batch makes 23)."""

    type: str
    value: Any


@dataclass(frozen=True)
class Insert:
    """One multi-row insert: `rows` are tuples in `columns` order, of Python values."""

    table: str
    columns: Sequence[str]
    types: Sequence[ColumnType]
    rows: Sequence[Sequence[Any]]
    on_conflict: str = ""


@dataclass(frozen=True)
class ImportProgress:
    """How far the import of one file (by its SHA-256, hex) got: the lines written, the
    events they made, and the log's position and hash after its last batch. Each import batch
    stores it in its own transaction as an idempotency record (`key`), so it is exactly as
    true as the batch: a re-run of the file resumes after `lines`, or writes nothing once
    `finished`."""

    digest: str
    lines: int
    events: int
    position: int
    hash: bytes
    finished: bool

    PREFIX = "import "  # no API client's key can start so: theirs are "<key id>:<key>"

    @property
    def key(self) -> str:
        return f"{self.PREFIX}{self.digest} {self.lines:012d}"  # sorts in line order

    def answer(self) -> str:
        return orjson.dumps(
            {
                "lines": self.lines,
                "events": self.events,
                "position": self.position,
                "hash": self.hash.hex(),
                "finished": self.finished,
            }
        ).decode()


class Rows(Protocol):
    """The rows of a query issued in a batch transaction, fetched when needed (PostgreSQL
    sends every query of the batch's read in one round trip)."""

    def fetchall(self) -> list[Any]: ...


class BatchSQL(Protocol):
    """One batch transaction, holding the log's write lock."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def insert(self, insert: Insert) -> None: ...

    def copy(self, insert: Insert) -> None:
        """`insert` the fastest way the database loads many rows (PostgreSQL: binary COPY)."""
        ...

    def announce(self) -> None:
        """Tells readers in other processes that the log grew (when this commits)."""
        ...

    @property
    def library_cursor(self) -> Any:
        """A cursor of this transaction for the `eventsourcing` library's tracking code."""
        ...


class Dialect(Protocol):
    """What one database does its own way; the recorder core does the rest."""

    integrity_errors: tuple[type[BaseException], ...]

    def table(self, name: str) -> str:
        """The quoted (and, with schemas, qualified) identifier of a table."""
        ...

    def one_of(
        self, columns: Sequence[str], types: Sequence[ColumnType], values: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        """A condition true for rows whose `columns` equal one of the `values` tuples."""
        ...

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Mapping[str, Any]]:
        """Rows by column name, read outside any write transaction."""
        ...

    def library_id(self, stream_id: UUID) -> Any:
        """A stream id as the `eventsourcing` library's own tables (its snapshots) hold it."""
        ...

    def library_id_of(self, column: str) -> str:
        """The SQL of a stream id column of eventkeep's tables as the library's tables hold
        the id (to match a snapshot to its stream's events in one statement)."""
        ...

    def read_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`read` as plain tuples (no mapping built per row: the bulk reads of the log)."""
        ...

    # The select list of `EventRecorder.select_envelopes`: position, stream id (text), stream
    # type, stream version, event type, schema version, recorded_at (as `rfc3339` takes it),
    # data (bytes) and metadata (JSON text).
    envelope_columns: str

    def rfc3339(self, value: Any) -> str:
        """A selected `recorded_at` as the export envelope gives it (UTC, microseconds, Z)."""
        ...

    def write(self, insert: Insert) -> None:
        """An insert committed on its own."""
        ...

    def locked_transaction(self, events_table: str) -> AbstractContextManager[BatchSQL]: ...

    def bulk_transaction(self, events_table: str) -> AbstractContextManager[BatchSQL]:
        """A transaction holding the log's write lock, for an import's large batches (`copy`
        allowed), on a connection of its own."""
        ...

    has_append_function: bool  # whether the migrations install `<events>_append`

    def one_trip(
        self, events_table: str
    ) -> AbstractContextManager[Callable[[str, Sequence[Argument]], int]]:
        """A write connection checked to be open, nothing sent yet; the callable sends the
        log's write lock, `SELECT function(arguments)` and COMMIT in one round trip and
        answers what the function answered."""
        ...

    def landed(self, events_table: str, position: int, hash: bytes, timeout: float) -> bool:
        """Whether the log has `hash` at `position`, asked on a new connection after taking
        the log's write lock (a batch still committing has ended); raises when it cannot ask
        within `timeout` seconds."""
        ...

    def schema_database(self) -> AbstractContextManager[SchemaDatabase]: ...

    def close(self) -> None: ...

    def value(self, value: Any, type: ColumnType) -> Any:
        """A Python value as this driver takes it for a column of `type`."""
        ...

    # Values as read back: the drivers return different Python types for the same column.
    def uuid(self, value: Any) -> UUID: ...

    def time(self, value: Any) -> Any: ...

    def json(self, value: Any) -> Any: ...


class EventRecorder:
    """The application recorder of both stores, mixed in before the library's recorder base
    and `ApplicationRecorder` (whose abstract methods it implements)."""

    sql: Dialect
    events_table_name: str
    address: StoreAddress | None = None  # set by the factory that made it
    subscription_class: type[PollingSubscription] = PollingSubscription

    def _init_events(self, dialect: Dialect, events_table_name: str) -> None:
        self.sql = dialect
        self.events_table_name = events_table_name
        self.schema: Schema = event_store_schema(events_table_name, dialect.table)
        self._events = dialect.table(events_table_name)
        self._claims = dialect.table(events_table_name + "_claims")
        self._idempotency = dialect.table(events_table_name + "_idempotency")
        self._data_keys = dialect.table(events_table_name + "_data_keys")
        self._append_function = self.schema.names["append"]
        self.channel = events_table_name.replace(".", "_")  # of the NOTIFY after a commit
        # Set by the factory when the deployment has a secret and names its personal fields.
        self.personal_data: PersonalData | None = None
        self._import_head: Head | None = None  # where the last import batch left the log
        self._woken: weakref.WeakSet[Any] = weakref.WeakSet()
        self._committer = GroupCommitter(
            _BatchStorage(self),
            is_integrity_error=lambda e: isinstance(e, (*dialect.integrity_errors, IntegrityError)),
            after_commit=self._wake,
            name=f"eventkeep-group-commit-{events_table_name}",
        )

    # --- schema --------------------------------------------------------------------------

    def create_table(self) -> None:
        """Migrates the store's tables, then lets the library create its own (the tracking
        table of a process recorder)."""
        self.migrate_schema()
        super().create_table()  # type: ignore[misc]  # the library recorder, next in the MRO

    def migrate_schema(self) -> list[Migration]:
        """Brings the store's tables to this code's schema version (see `migrations`);
        returns the migrations applied."""
        with self.sql.schema_database() as database:
            return migrate(database, self.schema)

    def schema_status(self) -> SchemaStatus:
        with self.sql.schema_database() as database:
            return status(database, self.schema)

    def check_schema(self) -> None:
        """Refuses a schema newer than this code (`SchemaTooNewError`); changes nothing."""
        with self.sql.schema_database() as database:
            check(database, self.schema)

    # --- writing -------------------------------------------------------------------------

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        """The library's append (its keywords: `metadata`, `claims`, `idempotency`,
        `tracking`); the command layer calls `append` with a typed `Append`."""
        return self.append(Append.from_kwargs(stored_events, **kwargs))

    def append(self, append: Append) -> list[int]:
        """Writes the append whole or not at all (group commit); its events' positions."""
        if not (append.events or append.claims or append.idempotency or append.tracking):
            return []
        append = self._sealed(append)
        with self._forgetting_keys(append):
            return self._committer.append(append)

    async def append_async(self, append: Append) -> list[int]:
        """`append` for a coroutine: the commit is awaited, no thread waits for it; sealing
        that must ask the data-key table runs in a worker thread."""
        if not (append.events or append.claims or append.idempotency or append.tracking):
            return []
        try:
            append = self._sealed(append, query=False)
        except KeysNotKept:
            append = await anyio.to_thread.run_sync(self._sealed, append)
        with self._forgetting_keys(append):
            return await self._committer.append_async(append)

    @contextmanager
    def _forgetting_keys(self, append: Append) -> Iterator[None]:
        """Forgets the data keys made for `append` if it fails: perhaps not stored."""
        try:
            yield
        except BaseException:
            if append.data_keys and self.personal_data is not None:
                self.personal_data.forget(append.data_keys)
            raise

    def append_all(self, appends: Iterable[Append]) -> int:
        """Writes appends in their order, many per transaction, without waiting for each
        commit (`GroupCommitter.append_all`: a bulk import); the events written."""
        return self._committer.append_all(self._sealed(a) for a in appends)

    def _sealed(self, append: Append, *, query: bool = True) -> Append:
        """The append with its personal fields sealed and the data keys made for its new
        streams (`eventstore.pii`), which its own batch stores."""
        if self.personal_data is None:
            return append
        sealed = self.personal_data.seal(append.events, query=query)
        return evolved(append, events=sealed.events, data_keys=sealed.new_keys)

    def import_progress(self, digest: str) -> ImportProgress | None:
        """The last batch recorded for the import of the file `digest` (None: none, or one
        whose last event the log does not hold: a log dropped and made again)."""
        rows = self.sql.read(
            f"SELECT result FROM {self._idempotency} WHERE key LIKE %s ORDER BY key DESC LIMIT 1",
            (f"{ImportProgress.PREFIX}{digest} %",),
        )
        if not rows:
            return None
        found = self.sql.json(rows[0]["result"])
        progress = ImportProgress(
            digest,
            int(found["lines"]),
            int(found["events"]),
            int(found["position"]),
            bytes.fromhex(found["hash"]),
            bool(found["finished"]),
        )
        if progress.position:
            held = self.sql.read(
                f"SELECT hash FROM {self._events} WHERE position = %s", (progress.position,)
            )
            if not held or bytes(held[0]["hash"]) != progress.hash:
                return None
        return progress

    def import_batch(
        self,
        appends: Sequence[Append],
        *,
        digest: str,
        lines: int,
        events_before: int,
        finished: bool,
    ) -> ImportProgress:
        """Writes an import's appends in one transaction under the log's write lock, the
        events loaded with `BatchSQL.copy`, with what group commit writes for them (positions
        after the log's head, the hash chain, data keys, claims, NOTIFY) and the import's
        progress (`ImportProgress`, `lines` of the file written): all of it or nothing.
        A version already stored refuses the whole batch (`IntegrityError`)."""
        sealed = [self._sealed(append) for append in appends]
        made = [stream for append in sealed for stream in append.data_keys]
        # Planned (numbered and hashed) on the head the import's last batch left, before the
        # lock: the lock is held for the load, and only planned again when a command appended.
        guess, self._import_head = self._import_head, None
        now = datetime.now(UTC)
        plan = plan_batch(sealed, state_at(guess), now, self.chain_key) if guess else None
        try:
            with self.sql.bulk_transaction(self._events) as batch:
                transaction = _BatchTransaction(self, batch)
                head = transaction.head()
                if plan is None or head != guess:
                    plan = plan_batch(sealed, state_at(head), now, self.chain_key)
                for _, outcome in plan.outcomes:
                    if isinstance(outcome, Exception):
                        raise outcome
                last = plan.rows[-1] if plan.rows else head
                progress = ImportProgress(
                    digest,
                    lines,
                    events_before + len(plan.rows),
                    last.position,
                    last.hash,
                    finished,
                )
                transaction.write(plan, bulk=True)
                record = [(progress.key, "import", progress.answer())]
                columns = ("key", "request_hash", "result")
                batch.insert(Insert(self._idempotency, columns, ("text", "text", "jsonb"), record))
        except BaseException as error:
            if made and self.personal_data is not None:
                self.personal_data.forget(made)  # perhaps not stored
            if isinstance(error, self.sql.integrity_errors):  # a version taken meanwhile
                raise IntegrityError(str(error)) from error
            raise
        self._import_head = Head(progress.position, progress.hash)
        if plan.rows:
            self._wake()
        return progress

    @property
    def chain_key(self) -> bytes | None:
        """The hash chain's HMAC key (None: unkeyed, as before the chain was keyed)."""
        return self._committer.chain_key

    def set_chain_key(self, key: bytes | None) -> None:
        self._committer.chain_key = key

    def set_commit_timeouts(
        self, *, result_wait: float | None = None, verify_timeout: float | None = None
    ) -> None:
        """See `GroupCommitter.set_timeouts` (the factory sets them from its environment)."""
        self._committer.set_timeouts(result_wait=result_wait, verify_timeout=verify_timeout)

    def close(self) -> None:
        self._committer.close()
        self.sql.close()

    def wake_after_commit(self, listener: Any) -> None:
        """Calls `listener.wake()` after each commit of this process (held weakly)."""
        self._woken.add(listener)

    def _wake(self) -> None:
        for listener in list(self._woken):
            listener.wake()

    # --- reading -------------------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        query = (
            "SELECT stream_id, stream_version, event_type, data, stream_type, schema_version,"
            f" recorded_at FROM {self._events} WHERE stream_id = %s"
        )
        params: list[Any] = [self.sql.value(originator_id, "uuid")]
        if gt is not None:
            query += " AND stream_version > %s"
            params.append(gt)
        if lte is not None:
            query += " AND stream_version <= %s"
            params.append(lte)
        query += " ORDER BY stream_version DESC" if desc else " ORDER BY stream_version"
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        events = [RecordedEvent(**self._stored(row)) for row in self.sql.read(query, params)]
        return cast(list[StoredEvent], self._opened(events))

    def select_streams(
        self, stream_ids: Sequence[UUID], snapshots_table: str | None = None
    ) -> dict[UUID, Stream | Exception]:
        """Streams as the write path loads them, all in ONE statement: each one's latest
        snapshot (from the `eventsourcing` library's snapshot table, when named), its events
        after that, and its wrapped data key, which opens them and is kept for sealing the
        stream's next event (`PersonalData.open_loaded`). Every stream asked for has an entry
        (no snapshot and no events: the stream does not exist); one whose events cannot be
        opened has its exception, so it fails only the commands that asked for it."""
        ids = list(dict.fromkeys(stream_ids))
        columns = "part, stream_id, stream_version, event_type, data, stream_type, schema_version"
        sql, params, after = f"SELECT {columns}, recorded_at FROM (", [], "0"
        if snapshots_table is not None:
            snapshots = self.sql.table(snapshots_table)
            wanted, snapshot_params = self.sql.one_of(
                ["s.originator_id"], ["uuid"], [[self.sql.library_id(i)] for i in ids]
            )
            sql = (
                "WITH snapshot AS (SELECT s.originator_id, s.originator_version, s.topic,"
                f" s.state FROM {snapshots} s WHERE {wanted} AND s.originator_version ="
                f" (SELECT MAX(m.originator_version) FROM {snapshots} m"
                " WHERE m.originator_id = s.originator_id)) "
                + sql
                + "SELECT 0 AS part, originator_id AS stream_id, originator_version AS"
                " stream_version, topic AS event_type, state AS data, NULL AS stream_type,"
                " NULL AS schema_version, NULL AS recorded_at FROM snapshot UNION ALL "
            )
            params += snapshot_params
            after = (
                "COALESCE((SELECT n.originator_version FROM snapshot n WHERE n.originator_id"
                f" = {self.sql.library_id_of('e.stream_id')}), 0)"
            )
        in_events, event_params = self.sql.one_of(["e.stream_id"], ["uuid"], [[i] for i in ids])
        sql += (
            "SELECT 1 AS part, e.stream_id, e.stream_version, e.event_type, e.data,"
            f" e.stream_type, e.schema_version, e.recorded_at FROM {self._events} e"
            f" WHERE {in_events} AND e.stream_version > {after}"
        )
        params += event_params
        if self.personal_data is not None:
            in_keys, key_params = self.sql.one_of(["stream_id"], ["uuid"], [[i] for i in ids])
            sql += (
                " UNION ALL SELECT 2, stream_id, NULL, NULL, wrapped, NULL, NULL, NULL"
                f" FROM {self._data_keys} WHERE {in_keys}"
            )
            params += key_params
        sql += ") AS loaded"
        snapshot: dict[UUID, StoredEvent] = {}
        events: dict[UUID, list[StoredEvent]] = {i: [] for i in ids}
        wrapped: dict[UUID, bytes] = {}
        for row in self.sql.read(sql, params):
            stream_id = self.sql.uuid(row["stream_id"])
            if row["part"] == 1:
                events[stream_id].append(RecordedEvent(**self._stored(row)))
            elif row["part"] == 0:
                snapshot[stream_id] = StoredEvent(
                    stream_id, row["stream_version"], row["event_type"], bytes(row["data"])
                )
            else:
                wrapped[stream_id] = bytes(row["data"])
        loaded: dict[UUID, Stream | Exception] = {}
        for stream_id, stream in events.items():
            stream.sort(key=lambda event: event.originator_version)  # UNION ALL keeps no order
            if self.personal_data is not None:
                try:
                    stream = self.personal_data.open_loaded(
                        stream, str(stream_id), wrapped.get(stream_id)
                    )
                except Exception as error:  # this stream's alone (a key that will not open)
                    loaded[stream_id] = error
                    continue
            loaded[stream_id] = snapshot.get(stream_id), stream
        return loaded

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
        decrypt: bool = True,
    ) -> list[LoggedEvent]:
        """The log from position `start` (`topics`: the event types wanted, all if empty);
        `decrypt=False` gives the stored bytes (hash verification)."""
        query = f"SELECT {EVENT_COLUMNS} FROM {self._events} WHERE 1 = 1"
        params: list[Any] = []
        if start is not None:
            query += " AND position >= %s" if inclusive_of_start else " AND position > %s"
            params.append(start)
        if stop is not None:
            query += " AND position <= %s"
            params.append(stop)
        if topics:
            wanted, values = self.sql.one_of(("event_type",), ("text",), [(t,) for t in topics])
            query += f" AND {wanted}"
            params.extend(values)
        query += " ORDER BY position LIMIT %s"
        params.append(limit)
        events = [self._logged_event(row) for row in self.sql.read(query, params)]
        return self._opened(events) if decrypt else events

    def select_envelopes(
        self,
        after: int,
        limit: int,
        until: int | None = None,
        stream_types: Sequence[str] = (),
        *,
        only: Container[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The log after position `after` (at most `limit` events, none after `until`, only
        `stream_types` if given) straight into export envelopes as recorded
        (`eventstore.envelope.to_envelope`'s, personal fields opened; of the event types
        `only` names, if given: the others left sealed): a tuple per row and the values in
        their final types, with no `LoggedEvent` between.
        The bulk readers of the log (rebuild, catch-up) spent ~40 % of their time building
        and converting those (cProfile, docs/performance.md)."""
        query = f"SELECT {self.sql.envelope_columns} FROM {self._events}"
        query += " WHERE position > %s AND position <= %s"
        params: list[Any] = [after, until if until is not None else 2**62]
        if stream_types:
            wanted, values = self.sql.one_of(
                ("stream_type",), ("text",), [(t,) for t in stream_types]
            )
            query += f" AND {wanted}"
            params.extend(values)
        rows = self.sql.read_tuples(query + " ORDER BY position LIMIT %s", [*params, limit])
        loads, time = orjson.loads, self.sql.rfc3339
        envelopes = [
            {
                "position": position,
                "stream_id": stream_id,
                "stream_type": stream_type,
                "stream_version": version,
                "event_type": event_type,
                "schema_version": schema,
                "recorded_at": time(recorded_at),
                "data": loads(data),
                "metadata": loads(metadata),
            }
            for position, stream_id, stream_type, version, event_type, schema, recorded_at, data,
            metadata in rows
        ]  # fmt: skip
        if self.personal_data is None:
            return envelopes
        return self.personal_data.open_envelopes(envelopes, only=only)

    def stream_history(self, stream_id: UUID | str) -> list[LoggedEvent]:
        """One stream's events as logged (positions, metadata, hashes), in version order."""
        query = f"SELECT {EVENT_COLUMNS} FROM {self._events} WHERE stream_id = %s"
        rows = self.sql.read(
            query + " ORDER BY stream_version", (self.sql.value(stream_id, "uuid"),)
        )
        return self._opened([self._logged_event(row) for row in rows])

    def max_notification_id(self) -> int | None:
        """The last position of the log (None: the log is empty)."""
        [row] = self.sql.read(f"SELECT max(position) AS head FROM {self._events}")
        return row["head"]

    def claim_owner(self, scope: str, key: str) -> UUID | None:
        """Who holds a unique claim (None: nobody)."""
        rows = self.sql.read(
            f"SELECT owner FROM {self._claims} WHERE scope = %s AND key = %s", (scope, key)
        )
        return self.sql.uuid(rows[0]["owner"]) if rows else None

    def last_versions(self, stream_ids: Sequence[UUID | str]) -> dict[str, int]:
        """Each stream's last version, in one statement (streams with no event left out)."""
        if not stream_ids:
            return {}
        where, params = self.sql.one_of(("stream_id",), ("uuid",), [(s,) for s in stream_ids])
        rows = self.sql.read(
            f"SELECT stream_id, max(stream_version) AS version FROM {self._events}"
            f" WHERE {where} GROUP BY stream_id",
            params,
        )
        return {str(self.sql.uuid(row["stream_id"])): int(row["version"]) for row in rows}

    def claim_owners(self, claims: Sequence[tuple[str, str]]) -> dict[tuple[str, str], UUID]:
        """Who holds each of the unique claims (scope, key), in one statement (a claim
        nobody holds left out)."""
        if not claims:
            return {}
        where, params = self.sql.one_of(("scope", "key"), ("text", "text"), claims)
        rows = self.sql.read(f"SELECT scope, key, owner FROM {self._claims} WHERE {where}", params)
        return {(row["scope"], row["key"]): self.sql.uuid(row["owner"]) for row in rows}

    def find_idempotent(self, key: str) -> tuple[str, Any] | None:
        """The request hash and the answer (parsed JSON, as the command layer stored it)
        recorded under an idempotency key; None when the key is unused."""
        rows = self.sql.read(
            f"SELECT request_hash, result FROM {self._idempotency} WHERE key = %s", (key,)
        )
        if not rows:
            return None
        return rows[0]["request_hash"], self.sql.json(rows[0]["result"])

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[Any]:
        # Concrete recorders are ApplicationRecorders too (this class is their mixin).
        subscription = self.subscription_class(
            cast(ApplicationRecorder, self), gt=gt, topics=topics
        )
        self.wake_after_commit(subscription)
        return subscription

    def _logged_event(self, row: Mapping[str, Any]) -> LoggedEvent:
        return LoggedEvent(
            id=row["position"],
            **self._stored(row),
            metadata=self.sql.json(row["metadata"]),
            prev_hash=bytes(row["prev_hash"]),
            hash=bytes(row["hash"]),
        )

    def _stored(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row's fields of a `RecordedEvent` (the library's names: `topic` is the event
        type, `originator_*` the stream)."""
        return {
            "originator_id": self.sql.uuid(row["stream_id"]),
            "originator_version": row["stream_version"],
            "topic": row["event_type"],
            "state": bytes(row["data"]),
            "stream_type": row["stream_type"],
            "schema_version": row["schema_version"],
            "recorded_at": self.sql.time(row["recorded_at"]),
        }

    def _opened(self, events: list[E]) -> list[E]:
        return events if self.personal_data is None else self.personal_data.open(events)

    # --- tracking (recorded only by process recorders) ------------------------------------

    def _tracking_query(self, batch: BatchSQL, names: list[str]) -> Rows | None:
        if names:
            raise IntegrityError("this recorder does not record tracking")
        return None

    def _write_tracking(self, batch: BatchSQL, tracking: list[Tracking]) -> None:
        """Only process recorders record tracking."""


class TrackingInBatch(EventRecorder):
    """Process recorders: the tracking of what was processed joins the events' batch."""

    tracking_table: str  # quoted, set by the dialect's process recorder

    def _tracking_query(self, batch: BatchSQL, names: list[str]) -> Rows | None:
        if not names:
            return None
        wanted, params = self.sql.one_of(("application_name",), ("text",), [(n,) for n in names])
        return batch.query(
            f"SELECT application_name, max(notification_id) FROM {self.tracking_table}"
            f" WHERE {wanted} GROUP BY application_name",
            params,
        )

    def _write_tracking(self, batch: BatchSQL, tracking: list[Tracking]) -> None:
        insert = cast(Any, self)._insert_tracking  # the library's tracking recorder's
        for record in tracking:
            insert(batch.library_cursor, record)


class _BatchStorage:
    """Group commit's storage: one locked transaction per batch, in the recorder's dialect."""

    def __init__(self, recorder: EventRecorder) -> None:
        self._recorder = recorder

    @contextmanager
    def locked_transaction(self) -> Iterator[_BatchTransaction]:
        with self._recorder.sql.locked_transaction(self._recorder._events) as batch:
            yield _BatchTransaction(self._recorder, batch)

    @property
    def has_one_trip(self) -> bool:
        return self._recorder.sql.has_append_function

    @contextmanager
    def one_trip(self) -> Iterator[Callable[[BatchPlan, Head], bool]]:
        recorder = self._recorder
        with recorder.sql.one_trip(recorder._events) as send:
            yield (
                lambda plan, head: (
                    send(recorder._append_function, _append_arguments(recorder, plan, head)) == 0
                )
            )

    def landed(self, position: int, hash: bytes, timeout: float) -> bool:
        return self._recorder.sql.landed(self._recorder._events, position, hash, timeout)


def _append_arguments(recorder: EventRecorder, plan: BatchPlan, head: Head) -> list[Argument]:
    """The append function's arguments (eventstore/migrations.py, version 3): the batch's
    rows, claims, idempotency records, erased streams and new data keys, one array per
    column."""
    rows = plan.rows
    erasing = recorder.personal_data.erasing_event if recorder.personal_data else None
    claims = list(plan.claims.items())
    # The rows' columns in one transposition (rows are tuples: `group_commit.Row`).
    columns = [list(c) for c in zip(*rows, strict=True)] or [[] for _ in Row._fields]
    positions, streams, stream_types, versions, event_types, schemas, recorded, datas = columns[:8]
    previous, hashes = columns[9:11]
    stream_ids = [_uuid(stream) for stream in streams]
    erased = [s for s, t in zip(stream_ids, event_types, strict=True) if t == erasing]
    return [
        Argument("bigint", head.position),
        Argument("bytea", head.hash),
        Argument("text", recorder.channel),
        Argument("bigint[]", positions),
        Argument("uuid[]", stream_ids),
        Argument("bigint[]", versions),
        Argument("text[]", stream_types),
        Argument("text[]", event_types),
        Argument("int[]", schemas),
        Argument("timestamptz[]", recorded),
        Argument("bytea[]", datas),
        Argument("text[]", _metadata_json(rows)),
        Argument("bytea[]", previous),
        Argument("bytea[]", hashes),
        Argument("text[]", [scope for (scope, _), _ in claims]),
        Argument("text[]", [key for (_, key), _ in claims]),
        Argument("uuid[]", [owner for _, owner in claims]),
        Argument("text[]", [i.key for i in plan.idempotency]),
        Argument("text[]", [i.request_hash for i in plan.idempotency]),
        Argument("text[]", [i.stored_answer() for i in plan.idempotency]),
        Argument("uuid[]", erased),
        Argument("uuid[]", [_uuid(stream) for stream in plan.data_keys]),
        Argument("bytea[]", list(plan.data_keys.values())),
    ]


def _metadata_json(rows: Sequence[Row]) -> list[str]:
    """Each row's metadata as JSON text, encoded once per append (its rows share the dict)."""
    texts: dict[int, str] = {}
    found = []
    for row in rows:
        text = texts.get(id(row.metadata))
        if text is None:
            text = texts[id(row.metadata)] = orjson.dumps(row.metadata).decode()
        found.append(text)
    return found


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


class _BatchTransaction:
    def __init__(self, recorder: EventRecorder, batch: BatchSQL) -> None:
        self._recorder = recorder
        self._batch = batch

    def head(self) -> Head:
        """The log's last position and hash (0 and `GENESIS` when empty)."""
        last = self._head_query().fetchall()
        return Head(last[0][0], bytes(last[0][1])) if last else Head(0, GENESIS)

    def _head_query(self) -> Rows:
        return self._batch.query(
            f"SELECT position, hash FROM {self._recorder._events} ORDER BY position DESC LIMIT 1"
        )

    def read_state(self, appends: Sequence[Append]) -> StoreState:
        r, batch, sql = self._recorder, self._batch, self._recorder.sql
        # Every query first, then every fetch: one round trip where the driver pipelines.
        head = self._head_query()
        versions = [(e.originator_id, e.originator_version) for a in appends for e in a.events]
        taken = _select(
            batch, sql, "stream_id, stream_version", r._events, ("uuid", "bigint"), versions
        )
        claims = [(c.scope, c.key) for a in appends for c in a.claims]
        owners = _select(batch, sql, "scope, key, owner", r._claims, ("text", "text"), claims)
        keys = [(a.idempotency.key,) for a in appends if a.idempotency is not None]
        used = _select(batch, sql, "key", r._idempotency, ("text",), keys)
        tracked = r._tracking_query(
            batch, sorted({a.tracking.application_name for a in appends if a.tracking})
        )
        last = head.fetchall()
        return StoreState(
            last_position=last[0][0] if last else 0,
            last_hash=bytes(last[0][1]) if last else GENESIS,
            taken_versions={(str(sql.uuid(s)), v) for s, v in taken.fetchall()},
            claim_owners={(s, k): sql.uuid(o) for s, k, o in owners.fetchall()},
            used_idempotency_keys={key for (key,) in used.fetchall()},
            tracking_max={
                name: value for name, value in (tracked.fetchall() if tracked else []) if value
            },
        )

    def write(self, plan: BatchPlan, *, bulk: bool = False) -> None:
        """`plan`'s writes; `bulk`: its events loaded with `BatchSQL.copy`."""
        r, batch = self._recorder, self._batch
        if plan.rows:
            (batch.copy if bulk else batch.insert)(
                Insert(
                    r._events,
                    EVENT_COLUMNS.split(", "),
                    EVENT_TYPES,
                    [
                        (
                            row.position,
                            row.stream_id,
                            row.stream_version,
                            row.stream_type,
                            row.event_type,
                            row.schema_version,
                            row.recorded_at,
                            row.data,
                            metadata,
                            row.prev_hash,
                            row.hash,
                        )
                        for row, metadata in zip(plan.rows, _metadata_json(plan.rows), strict=True)
                    ],
                )
            )
            batch.announce()
        if plan.data_keys:  # before the erasures, as the append function does
            keys = list(plan.data_keys.items())
            batch.insert(Insert(r._data_keys, ("stream_id", "wrapped"), ("uuid", "bytea"), keys))
        if plan.rows:
            erasing = r.personal_data.erasing_event if r.personal_data else None
            if erased := [(row.stream_id,) for row in plan.rows if row.event_type == erasing]:
                _delete(batch, r.sql, r._data_keys, ("stream_id",), ("uuid",), erased)
        claimed = [(scope, key, owner) for (scope, key), owner in plan.claims.items() if owner]
        released = [(scope, key) for (scope, key), owner in plan.claims.items() if not owner]
        if claimed:
            upsert = "ON CONFLICT (scope, key) DO UPDATE SET owner = excluded.owner"
            columns = ("scope", "key", "owner")
            batch.insert(Insert(r._claims, columns, ("text", "text", "uuid"), claimed, upsert))
        if released:
            _delete(batch, r.sql, r._claims, ("scope", "key"), ("text", "text"), released)
        if plan.idempotency:
            answers = [(i.key, i.request_hash, i.stored_answer()) for i in plan.idempotency]
            columns = ("key", "request_hash", "result")
            batch.insert(Insert(r._idempotency, columns, ("text", "text", "jsonb"), answers))
        r._write_tracking(batch, plan.tracking)


class _NoRows:
    def fetchall(self) -> list[Any]:
        return []


_NO_ROWS = _NoRows()


def _select(
    batch: BatchSQL,
    sql: Dialect,
    columns: str,
    table: str,
    types: Sequence[ColumnType],
    values: Sequence[Sequence[Any]],
) -> Rows:
    """`columns` of the rows whose leading columns equal one of `values`."""
    if not values:
        return _NO_ROWS
    keys = columns.split(", ")[: len(types)]
    wanted, params = sql.one_of(keys, types, values)
    return batch.query(f"SELECT {columns} FROM {table} WHERE {wanted}", params)


def _delete(
    batch: BatchSQL,
    sql: Dialect,
    table: str,
    columns: Sequence[str],
    types: Sequence[ColumnType],
    values: Sequence[Sequence[Any]],
) -> None:
    wanted, params = sql.one_of(columns, types, values)
    batch.execute(f"DELETE FROM {table} WHERE {wanted}", params)


class DataKeys:
    """The wrapped data keys of `eventstore.pii`, in `<events>_data_keys`."""

    def __init__(self, recorder: EventRecorder) -> None:
        self._sql = recorder.sql
        self._table = recorder._data_keys
        self._events = recorder._events

    def fetch(self, stream_ids: Iterable[str]) -> dict[str, bytes]:
        wanted, params = self._sql.one_of(("stream_id",), ("uuid",), [(i,) for i in stream_ids])
        rows = self._sql.read(
            f"SELECT stream_id, wrapped FROM {self._table} WHERE {wanted}", params
        )
        return {str(self._sql.uuid(row["stream_id"])): bytes(row["wrapped"]) for row in rows}

    def add_missing(self, wrapped: dict[str, bytes]) -> None:
        columns, rows = ("stream_id", "wrapped"), list(wrapped.items())
        self._sql.write(
            Insert(self._table, columns, ("uuid", "bytea"), rows, "ON CONFLICT DO NOTHING")
        )

    def erased(self, stream_ids: Iterable[str], erasing_event: str) -> set[str]:
        wanted, params = self._sql.one_of(("stream_id",), ("uuid",), [(i,) for i in stream_ids])
        rows = self._sql.read(
            f"SELECT DISTINCT stream_id FROM {self._events} WHERE event_type = %s AND {wanted}",
            [erasing_event, *params],
        )
        return {str(self._sql.uuid(row["stream_id"])) for row in rows}


@dataclass(frozen=True)
class StoreAddress:
    """How another process opens the same store (the bulk readers' processes,
    `projections/log_pages.py`): the library environment its factory was made with. Picklable;
    it holds the store's secrets, so it goes only to processes this one starts."""

    name: str
    env: dict[str, str]

    def open(self) -> EventRecorder:
        """A recorder of the store, its schema checked and never migrated."""
        env = Environment(self.name, self.env | {"CREATE_TABLE": "n"})
        return cast(EventRecorder, InfrastructureFactory.construct(env).application_recorder())

    def close(self, store: EventRecorder) -> None:
        store.close()


class RecorderFactory:
    """The library factory's additions, for both stores: recorders whose schema is migrated
    (or, with `CREATE_TABLE=n`, checked), with personal data sealed when the environment has a
    secret and names the personal fields, and whose committers close with the factory.

    A mixin placed before the library's factory class (`PostgresFactory`, `SQLiteFactory`):
    its `super()` calls reach that class, which the type checker cannot see from here."""

    env: Any

    # Seconds a writer waits for its append's answer (then 503), and seconds the committer
    # spends finding out whether a batch whose connection failed while committing is stored.
    COMMIT_RESULT_WAIT = "COMMIT_RESULT_WAIT"
    COMMIT_VERIFY_TIMEOUT = "COMMIT_VERIFY_TIMEOUT"
    # The hash chain's HMAC key, hex (else derived from the deployment secret, PII_SECRET).
    CHAIN_KEY = "CHAIN_KEY"

    def __init__(self, env: Any) -> None:
        super().__init__(env)  # type: ignore[call-arg]  # the library factory (see the class)
        self._made: list[EventRecorder] = []

    def application_recorder(self) -> ApplicationRecorder:
        return self._keep(super().application_recorder())  # type: ignore[misc]  # the library factory's

    def process_recorder(self) -> ProcessRecorder:
        return self._keep(super().process_recorder())  # type: ignore[misc]  # the library factory's

    def _keep(self, made: R) -> R:
        recorder = cast(EventRecorder, made)
        result_wait, verify = (
            self.env.get(self.COMMIT_RESULT_WAIT),
            self.env.get(self.COMMIT_VERIFY_TIMEOUT),
        )
        recorder.set_commit_timeouts(
            result_wait=float(result_wait) if result_wait else None,
            verify_timeout=float(verify) if verify else None,
        )
        if not self.env_create_table():
            recorder.check_schema()
        if key := self.env.get(self.CHAIN_KEY):
            recorder.set_chain_key(bytes.fromhex(key))
        elif secret := self.env.get(PII_SECRET):
            # The deployment secret keys the hash chain: the database never sees it.
            recorder.set_chain_key(chain_key(secret.encode()))
        if secret := self.env.get(PII_SECRET):
            fields = PersonalFields.from_env(self.env)
            recorder.personal_data = PersonalData(secret.encode(), DataKeys(recorder), fields)
        recorder.address = StoreAddress(self.env.name, dict(self.env))
        self._made.append(recorder)
        return made

    def env_create_table(self) -> bool:
        return bool(super().env_create_table())  # type: ignore[misc]  # the library factory's

    def close(self) -> None:
        for recorder in self._made:
            recorder.close()
        super().close()  # type: ignore[misc]  # the library factory's
