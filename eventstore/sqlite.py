"""The embedded event store: one SQLite file, no services.

Plugged into the `eventsourcing` library as a persistence module
(`PERSISTENCE_MODULE=eventkeep.eventstore.sqlite`, `SQLITE_DBNAME=<file>`). The recorder itself
is the core of `eventstore.recorder`, with the same group commit, hash chain and guarantees as
the PostgreSQL store; this module is its SQLite dialect: `?` placeholders, lists of values as
value lists (`IN (…)`, `IN (VALUES …)`), times as ISO text, metadata as JSON text, and
`BEGIN IMMEDIATE` as the write lock of a batch (and of a schema migration). Readers in this
process are woken after each commit; triggers refuse UPDATE and DELETE on the log.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing import sqlite as library_sqlite
from eventsourcing.persistence import ApplicationRecorder, ProcessRecorder
from eventsourcing.sqlite import (
    SQLiteConnection,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteRecorder,
    SQLiteTrackingRecorder,
)

from eventkeep.eventstore.hashchain import canonical_time
from eventkeep.eventstore.migrations import SQLiteSchemaDatabase, quote_identifier
from eventkeep.eventstore.recorder import (
    ColumnType,
    EventRecorder,
    Insert,
    RecorderFactory,
    TrackingInBatch,
)


class SQLiteDialect:
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)

    def __init__(self, datastore: SQLiteDatastore) -> None:
        self._datastore = datastore

    def table(self, name: str) -> str:
        return quote_identifier(name)

    def one_of(
        self, columns: Sequence[str], types: Sequence[ColumnType], values: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        if not values:
            return "1 = 0", []
        params = [self.value(v, t) for row in values for v, t in zip(row, types, strict=True)]
        if len(columns) == 1:
            return f"{columns[0]} IN ({', '.join(['%s'] * len(values))})", params
        # Through a subquery: `(a, b) IN (VALUES …)` scans the table, this searches its index.
        row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        names = ", ".join(f"column{n}" for n in range(1, len(columns) + 1))
        rows = ", ".join([row] * len(values))
        return f"({', '.join(columns)}) IN (SELECT {names} FROM (VALUES {rows}))", params

    def value(self, value: Any, type: ColumnType) -> Any:
        if type == "uuid":
            return str(value)
        if type == "timestamptz":
            return value.isoformat()
        return value

    def library_id(self, stream_id: UUID) -> Any:
        return stream_id.hex  # the library's SQLite recorders store UUIDs as hex

    def library_id_of(self, column: str) -> str:
        return f"replace({column}, '-', '')"  # eventkeep's tables hold str(UUID)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._datastore.transaction(commit=False) as cursor:
            cursor.execute(_placeholders(sql), params)
            return cursor.fetchall()

    def read_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.read(sql, params)]

    envelope_columns = (
        "position, stream_id, stream_type, stream_version, event_type, schema_version,"
        " recorded_at, data, metadata"
    )

    def rfc3339(self, value: Any) -> str:
        if len(value) == 32 and value.endswith("+00:00"):  # as this store writes UTC times
            return cast(str, value[:26]) + "Z"
        return canonical_time(datetime.fromisoformat(value)).replace("+00:00", "Z")

    def write(self, insert: Insert) -> None:
        with self._datastore.transaction(commit=True) as cursor:
            _insert(self, cursor, insert)

    # In-process: a batch costs no round trips, so every batch takes `locked_transaction`.
    has_append_function = False

    def one_trip(self, events_table: str) -> Any:
        raise NotImplementedError("SQLite has no append function")

    @contextmanager
    def locked_transaction(self, events_table: str) -> Iterator[_SQLiteBatch]:
        with self._datastore.get_connection(commit=True) as connection:
            cursor = connection.cursor()
            # Deleted content (an erased user's data key) is overwritten, not left in free pages.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.execute("BEGIN IMMEDIATE")
            try:
                batch = _SQLiteBatch(self, connection, cursor)
                yield batch
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
            if batch.deleted:
                # …nor in the write-ahead log's older frames: copied back and the log emptied.
                # Its row fetched: an unfinished statement would keep the pooled connection
                # busy, and the next thread's commit on it fails ("SQL statements in progress").
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cursor.fetchall()

    def bulk_transaction(self, events_table: str) -> AbstractContextManager[_SQLiteBatch]:
        return self.locked_transaction(events_table)  # in-process: nothing to stream

    def landed(self, events_table: str, position: int, hash: bytes, timeout: float) -> bool:
        # One file, one writer at a time: a read sees every committed transaction.
        rows = self.read(f"SELECT hash FROM {events_table} WHERE position = %s", (position,))
        return bool(rows) and bytes(rows[0]["hash"]) == hash

    @contextmanager
    def schema_database(self) -> Iterator[SQLiteSchemaDatabase]:
        with self._datastore.get_connection(commit=True) as connection:
            yield SQLiteSchemaDatabase(connection)

    def close(self) -> None:
        """The library's datastore owns the connections."""

    def uuid(self, value: Any) -> UUID:
        return UUID(value)

    def time(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def json(self, value: Any) -> Any:
        return orjson.loads(value)


def _placeholders(sql: str) -> str:
    return sql.replace("%s", "?")


def _insert(dialect: SQLiteDialect, cursor: SQLiteCursor, insert: Insert) -> None:
    columns, types = insert.columns, insert.types
    cursor.executemany(
        f"INSERT INTO {insert.table} ({', '.join(columns)})"
        f" VALUES ({', '.join(['?'] * len(columns))}) {insert.on_conflict}",
        [[dialect.value(v, t) for v, t in zip(row, types, strict=True)] for row in insert.rows],
    )


class _SQLiteBatch:
    def __init__(
        self, dialect: SQLiteDialect, connection: SQLiteConnection, cursor: SQLiteCursor
    ) -> None:
        self._dialect = dialect
        self._connection = connection
        self._cursor = cursor
        self.deleted = False  # whether the batch deleted rows (see locked_transaction)

    def query(self, sql: str, params: Sequence[Any] = ()) -> SQLiteCursor:
        cursor = self._connection.cursor()  # one per query: results are fetched later
        cursor.execute(_placeholders(sql), params)
        return cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.deleted = self.deleted or sql.lstrip().upper().startswith("DELETE")
        self._cursor.execute(_placeholders(sql), params)

    def insert(self, insert: Insert) -> None:
        _insert(self._dialect, self._cursor, insert)

    def copy(self, insert: Insert) -> None:
        self.insert(insert)  # one executemany: no faster load in SQLite

    def announce(self) -> None:
        """Readers in this process are woken after the commit; others poll."""

    @property
    def library_cursor(self) -> SQLiteCursor:
        return self._cursor


class SQLiteApplicationRecorder(EventRecorder, SQLiteRecorder, ApplicationRecorder):
    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        super().__init__(datastore)
        self._init_events(SQLiteDialect(datastore), events_table_name)


class SQLiteProcessRecorder(
    TrackingInBatch, SQLiteTrackingRecorder, SQLiteApplicationRecorder, ProcessRecorder
):
    """Events and the tracking of what was processed, in one group-commit transaction."""

    def __init__(self, datastore: SQLiteDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        self.tracking_table = "tracking"  # the library's name


class SQLiteFactory(RecorderFactory, library_sqlite.SQLiteFactory):
    """The library's factory, making this module's recorders (see `RecorderFactory`)."""

    # The library types these as its own recorder classes; ours share only its base.
    application_recorder_class = cast(Any, SQLiteApplicationRecorder)
    process_recorder_class = cast(Any, SQLiteProcessRecorder)

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        if not pool.is_sqlite_memory_mode:
            _use_wal(pool.db_name, timeout=float(pool.lock_timeout or 30))


def _use_wal(db_name: str, timeout: float) -> None:
    """Puts the database in WAL mode before the library's pool opens it. The library switches
    a new file itself, but that switch does not wait for a busy database: processes opening
    one new file together failed with "database is locked"."""
    deadline = time.monotonic() + timeout
    with closing(sqlite3.connect(db_name, uri=True, timeout=timeout)) as connection:
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


Factory = SQLiteFactory
