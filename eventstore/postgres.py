"""The distributed event store: PostgreSQL through psycopg 3 and psycopg-pool.

Plugged into the `eventsourcing` library as a persistence module
(`PERSISTENCE_MODULE=eventkeep.eventstore.postgres`). The recorder itself is the core of
`eventstore.recorder`; this module is its PostgreSQL dialect:
- lists of values travel as binary arrays (`unnest`, `= ANY`), so a batch of any size is one
  statement with a fixed text (prepared once); a one-trip batch's arrays are framed in one
  pass each (`eventstore.pg_arrays`);
- reads take a pooled connection and no lock; group commit writes on a connection of its own,
  under the log's write lock (an advisory transaction lock; positions are assigned under that
  lock, so position order is commit order and tailing readers never skip an event), and each
  commit that adds events `NOTIFY`s the log's channel. A batch in one trip is one statement
  in autocommit (the lock, the append function, the implicit commit: one message each way);
  the locked path is a pipelined transaction;
- schema changes are serialised by an advisory lock (`eventstore.migrations`); a trigger
  refuses UPDATE, DELETE and TRUNCATE on the log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from uuid import UUID

import orjson
import psycopg
import psycopg.errors
from eventsourcing import postgres as library_postgres
from eventsourcing.persistence import (
    ApplicationRecorder,
    InterfaceError,
    OperationalError,
    ProcessRecorder,
)
from eventsourcing.postgres import PostgresDatastore, PostgresRecorder, PostgresTrackingRecorder
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg.rows import tuple_row
from psycopg.types.json import set_json_loads

from eventkeep.eventstore.migrations import SCHEMA_LOCK, PostgresSchemaDatabase, quote_identifier
from eventkeep.eventstore.pg_arrays import encoded
from eventkeep.eventstore.pg_arrays import register as register_encoded_arrays
from eventkeep.eventstore.pools import check_and_sweep, check_unless_recent, note_given_back
from eventkeep.eventstore.recorder import (
    Argument,
    ColumnType,
    EventRecorder,
    Insert,
    RecorderFactory,
    TrackingInBatch,
)
from eventkeep.eventstore.subscription import PollingSubscription

T = TypeVar("T")

# jsonb (metadata) parsed by orjson: several times faster than the standard library's.
set_json_loads(orjson.loads)


class PostgresDialect:
    integrity_errors: tuple[type[BaseException], ...] = (psycopg.errors.IntegrityError,)

    def __init__(self, datastore: PostgresDatastore, channel: str) -> None:
        self._datastore = datastore
        self._channel = quote_identifier(channel)
        self._batch_connection: psycopg.Connection[Any] | None = None
        self._bulk_connection: psycopg.Connection[Any] | None = None

    def table(self, name: str) -> str:
        return f"{quote_identifier(self._datastore.schema)}.{quote_identifier(name)}"

    def one_of(
        self, columns: Sequence[str], types: Sequence[ColumnType], values: Sequence[Sequence[Any]]
    ) -> tuple[str, list[Any]]:
        arrays = _arrays(types, values)
        if len(columns) == 1:
            return f"{columns[0]} = ANY(%b::{types[0]}[])", arrays
        unnest = ", ".join(f"%b::{t}[]" for t in types)
        return f"({', '.join(columns)}) IN (SELECT * FROM unnest({unnest}))", arrays

    def value(self, value: Any, type: ColumnType) -> Any:
        return value

    def library_id(self, stream_id: UUID) -> Any:
        return stream_id

    def library_id_of(self, column: str) -> str:
        return column  # uuid in both

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        def run(connection: psycopg.Connection[Any]) -> list[Any]:
            with connection.cursor() as cursor:
                cursor.execute(cast(Any, sql), params or None, prepare=True)
                return cursor.fetchall()

        return self._on_a_live_connection(run)

    def read_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run(connection: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            with connection.cursor(row_factory=tuple_row, binary=True) as cursor:
                cursor.execute(cast(Any, sql), params or None, prepare=True)
                return cursor.fetchall()

        return self._on_a_live_connection(run)

    def _on_a_live_connection(self, read: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`read` on a pooled connection, and once more on another if the one lent was dead:
        a pool that checks only connections idle for a second (`check_unless_recent`, the
        API's and the loops') lends one ended since as it is. A read is safe to run again; the
        pool's idle connections are checked first (a restart ends them all). A read that
        fails on a live connection, or twice, raises as it did."""
        lent: list[psycopg.Connection[Any]] = []
        try:
            with self._datastore.get_connection() as connection:
                lent.append(connection)
                return read(connection)
        except (OperationalError, InterfaceError):
            if not (lent and lent[0].broken):
                raise
        self._datastore.pool.check()
        with self._datastore.get_connection() as connection:
            return read(connection)

    # The server formats the ids and times (C), the client converts no UUID or datetime.
    envelope_columns = (
        "position, stream_id::text, stream_type, stream_version, event_type, schema_version,"
        """ to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),"""
        " data, metadata::text"
    )

    def rfc3339(self, value: Any) -> str:
        return cast(str, value)  # formatted by the server

    def write(self, insert: Insert) -> None:
        with self._datastore.transaction(commit=True) as cursor:
            cursor.execute(*_insert(insert))

    has_append_function = True

    @contextmanager
    def locked_transaction(self, events_table: str) -> Iterator[_PostgresBatch]:
        # Pipeline mode: the lock and all reads go in one round trip, the writes and the
        # commit in a second one. Binary parameters avoid escaping every array element.
        connection = self._connect()
        try:
            with connection.pipeline(), connection.transaction():
                self._lock(connection, events_table)
                yield _PostgresBatch(connection, self._channel)
        except psycopg.OperationalError:
            connection.close()
            raise

    @contextmanager
    def bulk_transaction(self, events_table: str) -> Iterator[_PostgresBatch]:
        # An import's: on a connection of its own (the committer's serves its own thread), not
        # pipelined (COPY cannot be), the log's write lock taken first as every batch's is.
        if self._bulk_connection is None or self._bulk_connection.closed:
            self._bulk_connection = self._new_connection()
        connection = self._bulk_connection
        try:
            with connection.transaction():
                self._lock(connection, events_table)
                yield _PostgresBatch(connection, self._channel)
        except psycopg.OperationalError:
            connection.close()
            raise

    @contextmanager
    def one_trip(self, events_table: str) -> Iterator[Callable[[str, Sequence[Argument]], int]]:
        connection = self._connect()
        try:
            # Reads what already arrived, locally: a connection the server closed while it
            # was idle (a restart, a cut) fails here, before anything of the batch is sent.
            connection.pgconn.consume_input()
        except psycopg.OperationalError:
            connection.close()
            raise

        def send(function: str, arguments: Sequence[Argument]) -> int:
            # One statement, its own transaction (the connection is in autocommit): the write
            # lock (a function in FROM runs before the select list), then the append function,
            # whose statements each see what committed before the lock was granted (a volatile
            # function takes a fresh snapshot per statement), then the commit. One message
            # exchange and no pipeline: a batch costs the committer a single wait. The lock
            # and statement timeouts are the connection's own (`_connect`).
            placeholders = ", ".join(f"%b::{a.type}" for a in arguments)
            try:
                cursor = connection.cursor(binary=True)
                cursor.execute(
                    cast(
                        Any,
                        f"SELECT {function}({placeholders})"
                        " FROM pg_advisory_xact_lock(hashtext(%b::text))",
                    ),
                    [
                        *(encoded(a.type, _null_if_empty(a.value)) for a in arguments),
                        _lock_key(events_table),
                    ],
                    prepare=True,
                )
                row = cursor.fetchone()
            except psycopg.OperationalError:
                connection.close()
                raise
            assert row is not None
            return int(row[0])

        yield send

    def _lock(self, connection: psycopg.Connection[Any], events_table: str) -> None:
        """Sent first in a batch's transaction (pipelined: no round trip of its own)."""
        if timeout := self._datastore.lock_timeout:  # POSTGRES_LOCK_TIMEOUT, seconds
            # Bounded: the wait for the log's write lock and each statement.
            connection.execute(f"SET LOCAL lock_timeout = '{int(timeout)}s'")
            connection.execute(f"SET LOCAL statement_timeout = '{int(timeout)}s'")
        # The log's write lock: a transaction-level advisory lock of its own key, not
        # LOCK TABLE, which PostgreSQL 15 grants only to roles that may UPDATE, DELETE
        # or TRUNCATE the table (the writer role may only INSERT: eventstore/roles.py).
        # Every insert into the log comes through here, so it serialises them all.
        connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_key(events_table),))

    def landed(self, events_table: str, position: int, hash: bytes, timeout: float) -> bool:
        # The batch connection failed and was closed: this opens the next one. The write lock
        # first (a batch whose COMMIT the server is still working on ends before it is ours).
        if self._batch_connection is not None:
            self._batch_connection.close()
        connection = self._connect(connect_timeout=max(1, round(timeout)))
        try:
            with connection.transaction():
                connection.execute(f"SET LOCAL lock_timeout = {max(1, int(timeout * 1000))}")
                connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (_lock_key(events_table),)
                )
                row = connection.execute(
                    cast(Any, f"SELECT hash FROM {events_table} WHERE position = %s"),
                    (position,),
                ).fetchone()
        except psycopg.OperationalError:
            connection.close()
            raise
        return row is not None and bytes(row[0]) == hash

    @contextmanager
    def schema_database(self) -> Iterator[PostgresSchemaDatabase]:
        with self._datastore.get_connection() as connection:
            yield PostgresSchemaDatabase(connection)

    def close(self) -> None:
        for connection in (self._batch_connection, self._bulk_connection):
            if connection is not None:
                connection.close()

    def uuid(self, value: Any) -> UUID:
        return value if isinstance(value, UUID) else UUID(str(value))

    def time(self, value: Any) -> Any:
        return value

    def json(self, value: Any) -> Any:
        return value  # jsonb arrives parsed

    def _connect(self, **options: Any) -> psycopg.Connection[Any]:
        """The committer's connection: in autocommit (a one-trip batch is one statement, its
        own transaction; the locked path opens its transaction itself), its waits bounded by
        POSTGRES_LOCK_TIMEOUT for the session (a transaction may set its own)."""
        if self._batch_connection is None or self._batch_connection.closed:
            connection = self._new_connection(autocommit=True, **options)
            register_encoded_arrays(connection.adapters)  # a batch's arrays (`pg_arrays`)
            if timeout := self._datastore.lock_timeout:  # seconds
                connection.execute(f"SET lock_timeout = '{int(timeout)}s'")
                connection.execute(f"SET statement_timeout = '{int(timeout)}s'")
            self._batch_connection = connection
        return self._batch_connection

    def _new_connection(self, **options: Any) -> psycopg.Connection[Any]:
        pool = self._datastore.pool
        pool_kwargs = cast(dict[str, Any], pool.kwargs)  # a dict once the pool exists
        kwargs = {k: v for k, v in pool_kwargs.items() if k != "row_factory"}
        return psycopg.connect(cast(str, pool.conninfo), **(kwargs | options))


def _null_if_empty(value: Any) -> Any:
    """An empty array as NULL, which the append function reads as empty (`unnest` yields no
    row, `= ANY` matches none, `cardinality` is not > 0): psycopg then encodes nothing for
    it, and most of a command batch's arrays (claims, idempotency records, erasures, keys)
    are empty."""
    return None if isinstance(value, list) and not value else value


def _lock_key(events_table: str) -> str:
    """What the log's write lock is keyed by (`hashtext` of it): one lock per event table."""
    return f"eventkeep append {events_table}"


def _arrays(types: Sequence[ColumnType], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The rows as one list per column (uuid columns as UUIDs: one binary type per array)."""
    columns = [list(column) for column in zip(*rows, strict=True)] or [[] for _ in types]
    for index, type in enumerate(types):
        if type == "uuid":
            columns[index] = [v if isinstance(v, UUID) else UUID(str(v)) for v in columns[index]]
    return columns


def _insert(insert: Insert) -> tuple[Any, list[list[Any]]]:
    """One INSERT of every row, each column passed as one binary array (jsonb as text)."""
    table, columns, types = insert.table, insert.columns, insert.types
    names = [f"c{i}" for i in range(len(columns))]
    arrays = ", ".join(f"%b::{'text' if t == 'jsonb' else t}[]" for t in types)
    values = ", ".join(
        f"{n}::jsonb" if t == "jsonb" else n for n, t in zip(names, types, strict=True)
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values}"
        f" FROM unnest({arrays}) AS t({', '.join(names)}) {insert.on_conflict}"
    )
    return sql, _arrays(types, insert.rows)


_COPY_TYPES = {"int": "int4"}


class _JsonTextBinaryDumper(Dumper):
    """jsonb in binary from JSON text as is: psycopg's own would encode the text again."""

    format = Format.BINARY
    oid = 3802  # jsonb's, fixed in PostgreSQL: registered by it, COPY finds it by its type

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + (obj.encode() if isinstance(obj, str) else bytes(obj))


class _PostgresBatch:
    def __init__(self, connection: psycopg.Connection[Any], channel: str) -> None:
        self._connection = connection
        self._channel = channel

    def query(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        cursor = self._connection.cursor(binary=True)
        cursor.execute(cast(Any, sql), params or None, prepare=True)
        return cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.query(sql, params)

    def insert(self, insert: Insert) -> None:
        self.query(*_insert(insert))

    def copy(self, insert: Insert) -> None:
        """The rows through binary COPY (a jsonb column's values as JSON text)."""
        cursor = self._connection.cursor()
        cursor.adapters.register_dumper(None, _JsonTextBinaryDumper)
        columns = ", ".join(insert.columns)
        statement = f"COPY {insert.table} ({columns}) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(cast(Any, statement)) as copy:
            copy.set_types([_COPY_TYPES.get(t, t) for t in insert.types])
            for row in insert.rows:
                copy.write_row(row)

    def announce(self) -> None:
        self.query(f"NOTIFY {self._channel}")

    @property
    def library_cursor(self) -> Any:
        return self._connection.cursor(binary=True)


class PostgresSubscription(PollingSubscription):
    """Polls, and wakes early on the store's NOTIFY."""

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._listener = threading.Thread(target=self._listen, args=(recorder,), daemon=True)
        self._listener.start()

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            self._listener.join()

    def _listen(self, recorder: PostgresApplicationRecorder) -> None:
        try:
            with recorder.datastore.get_connection() as conn:
                conn.execute(cast(Any, f"LISTEN {quote_identifier(recorder.channel_name)}"))
                while not self._has_been_stopped:
                    for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                        self.wake()
        except Exception:
            return


class PostgresApplicationRecorder(EventRecorder, PostgresRecorder, ApplicationRecorder):
    subscription_class = PostgresSubscription

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore)
        self.check_identifier_length(events_table_name + "_idempotency")
        self.channel_name = events_table_name.replace(".", "_")
        self._init_events(PostgresDialect(datastore, self.channel_name), events_table_name)
        # The library creates the tracking table of a process recorder (appended after this):
        # serialised with every other schema change.
        self.sql_create_statements.append(
            cast(Any, psycopg.sql.SQL(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))
        )


class PostgresProcessRecorder(
    TrackingInBatch, PostgresTrackingRecorder, PostgresApplicationRecorder, ProcessRecorder
):
    """Events and the tracking of what was processed, in one group-commit transaction."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ):
        super().__init__(
            datastore,
            tracking_table_name=tracking_table_name,
            events_table_name=events_table_name,
        )
        self.tracking_table = self.sql.table(tracking_table_name)


class PostgresFactory(RecorderFactory, library_postgres.PostgresFactory):
    """The library's factory, making this module's recorders (see `RecorderFactory`)."""

    # The library types these as its own recorder classes; ours share only its base.
    application_recorder_class = cast(Any, PostgresApplicationRecorder)
    process_recorder_class = cast(Any, PostgresProcessRecorder)

    # The connection's other parameters (sslmode, sslrootcert, sslcert, sslkey, …) as a
    # conninfo string: the library passes on only dbname, host, port, user and password, and
    # TLS settings must reach every connection (the pool's, group commit's, LISTEN's).
    POSTGRES_CONNINFO = "POSTGRES_CONNINFO"
    # "unless_recent": the pool checks a connection only if not checked in the last second
    # (eventstore/pools.py `check_unless_recent`), for the relay's and projectors' processes.
    POOL_CHECKS = "POOL_CHECKS"

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        if options := self.env.get(self.POSTGRES_CONNINFO):
            pool_kwargs = cast(dict[str, Any], self.datastore.pool.kwargs)  # not yet opened
            pool_kwargs.update(conninfo_to_dict(options))
        if self.datastore.pre_ping:  # POSTGRES_PRE_PING: the library's pool checks, we sweep
            # The pool's check (not yet opened); in a long-running loop, not at every checkout.
            loop = self.env.get(self.POOL_CHECKS) == "unless_recent"
            self.datastore.pool._check = check_unless_recent if loop else check_and_sweep
            if loop:
                self.datastore.pool._reset = note_given_back


Factory = PostgresFactory
