"""Versioned schema migrations for the event store, its side tables and the key store.

Each versioned set of tables (a `Schema`: the event store's `<prefix>events` with its claims,
idempotency and data-key tables; the API key store) has numbered `Migration`s, one SQL list per
dialect. The table `eventkeep_schema_versions` records, per schema, each version applied and
when. `migrate` applies the missing versions once each, in order, each in its own transaction
together with its version row; a process seeing a schema newer than its code refuses to go on
(`SchemaTooNewError`, one line). Migrations are serialised across processes: on PostgreSQL by
an advisory lock held for the whole run, on SQLite by `BEGIN IMMEDIATE` (the write lock), and
every transaction re-reads the version under that lock, so processes started together on an
empty database apply each version exactly once and none of them crashes.

Version 1 of each schema is the tables as the releases before versioning created them, with
`IF NOT EXISTS` throughout: a database made by those releases (tables, no version table) is
adopted as version 1 unchanged, without losing a row.

Why no migration library: alembic needs SQLAlchemy, which nothing else here uses;
yoyo-migrations opens its own connections from a URL (so it cannot run inside the library's
SQLite datastore or share an in-memory database), serialises PostgreSQL with a polled lock
table rather than an advisory lock, and reads static SQL files, while our event tables are
named per application (`shop_events`, `stored_events`, one store per table prefix in one
database). What we need — ordered versions, one transaction each, a lock, a version table —
is the hundred lines below; the SQL stays in plain strings per dialect (nothing to package).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, cast

import psycopg
from psycopg.rows import tuple_row

Dialect = Literal["postgres", "sqlite"]
VERSION_TABLE = "eventkeep_schema_versions"
# The advisory lock of schema changes: every eventkeep process takes this one key, so schema
# changes of the event store, the key store and the library's tracking tables never interleave.
SCHEMA_LOCK = 0x656B_7363_6865_6D61  # "ekschema"

Run = Callable[..., list[tuple[Any, ...]]]  # run(sql, params=()) -> rows


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer eventkeep than this one."""

    def __init__(self, component: str, found: int, known: int) -> None:
        super().__init__(
            f"the database schema of {component} is at version {found}, newer than the "
            f"{known} this eventkeep knows: upgrade eventkeep (or point it at another database)"
        )
        self.component, self.found, self.known = component, found, known


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    postgres: Sequence[str]
    sqlite: Sequence[str]

    def statements(self, dialect: Dialect) -> Sequence[str]:
        return self.postgres if dialect == "postgres" else self.sqlite


@dataclass(frozen=True)
class Schema:
    """A versioned set of tables. `component` names it in the version table; `names` fills the
    `{placeholders}` of the migrations' SQL (quoted identifiers); `anchor` is its main table
    (quoted): when it was dropped by hand (tests, benchmarks), the versions recorded for the
    component are forgotten and the migrations run again from 1."""

    component: str
    migrations: Sequence[Migration]
    anchor: str
    names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.component}: migrations must be numbered 1, 2, …: {versions}")

    @property
    def latest(self) -> int:
        return len(self.migrations)


@dataclass(frozen=True)
class SchemaStatus:
    component: str
    current: int  # 0: nothing applied yet
    latest: int  # the newest version this code knows
    pending: Sequence[Migration]
    applied_at: datetime | None  # when `current` was applied


class SchemaDatabase(Protocol):
    """One connection to a database, with its dialect's way to serialise schema changes."""

    dialect: Dialect
    table_exists: str  # SQL answering one row, true when the table its %s quotes exists

    def serialised(self) -> AbstractContextManager[None]:
        """Held around a whole migration run."""
        ...

    def transaction(self) -> AbstractContextManager[Run]:
        """One transaction that holds the write lock (SQLite) and commits on success."""
        ...


class PostgresSchemaDatabase:
    """A psycopg connection in autocommit mode (a pool's or one of its own)."""

    dialect: Dialect = "postgres"
    table_exists = "SELECT to_regclass(%s) IS NOT NULL"  # the quoted (qualified) name

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        if not connection.autocommit:
            raise ValueError("migrations need an autocommit connection")
        self._connection = connection

    @contextmanager
    def serialised(self) -> Iterator[None]:
        self._run("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            yield
        finally:
            if not self._connection.closed:
                self._run("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))

    @contextmanager
    def transaction(self) -> Iterator[Run]:
        with self._connection.transaction():
            yield self._run

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # No parameters: the statement is sent as written (PL/pgSQL's `%` stays a `%`).
        with self._connection.cursor(row_factory=tuple_row) as cursor:
            cursor.execute(cast(Any, sql), params or None)
            return cursor.fetchall() if cursor.description else []


class SQLiteSchemaDatabase:
    """A SQLite connection in autocommit mode (`isolation_level=None`): a `sqlite3` one or the
    `eventsourcing` library's wrapper of one (same `cursor`/`commit`/`rollback`)."""

    dialect: Dialect = "sqlite"
    table_exists = (  # sqlite_master keeps names unquoted
        "SELECT count(*) FROM sqlite_master"
        " WHERE type = 'table' AND '\"' || replace(name, '\"', '\"\"') || '\"' = %s"
    )

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def serialised(self) -> AbstractContextManager[None]:
        return nullcontext()  # each transaction takes the write lock (`BEGIN IMMEDIATE`)

    @contextmanager
    def transaction(self) -> Iterator[Run]:
        cursor = self._connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:

            def run(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
                cursor.execute(sql.replace("%s", "?"), tuple(params))
                return [tuple(row) for row in cursor.fetchall()]

            yield run
        except BaseException:
            self._connection.rollback()
            raise
        self._connection.commit()


def sqlite_connection(path: str) -> sqlite3.Connection:
    """A connection for `SQLiteSchemaDatabase` to a database file."""
    return sqlite3.connect(path, isolation_level=None, timeout=30)


_CREATE_VERSION_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
    " component TEXT NOT NULL,"
    " version INTEGER NOT NULL,"
    " name TEXT NOT NULL,"
    " applied_at TEXT NOT NULL,"
    " PRIMARY KEY (component, version))"
)


def migrate(database: SchemaDatabase, schema: Schema) -> list[Migration]:
    """Applies the schema's missing migrations in order; returns those this call applied."""
    applied: list[Migration] = []
    with database.serialised():
        while True:
            with database.transaction() as run:
                # Created only when missing: a least-privilege role (no CREATE on the schema,
                # see eventstore/roles.py) opening an up-to-date schema runs no DDL at all.
                if not _exists(database, run, quote_identifier(VERSION_TABLE)):
                    run(_CREATE_VERSION_TABLE)
                current = _current(database, run, schema)[0]
                if current == schema.latest:
                    return applied
                migration = schema.migrations[current]  # version current + 1
                for statement in migration.statements(database.dialect):
                    run(statement.format_map(schema.names))
                run(
                    f"INSERT INTO {VERSION_TABLE} (component, version, name, applied_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (
                        schema.component,
                        migration.version,
                        migration.name,
                        datetime.now(UTC).isoformat(),
                    ),
                )
            applied.append(migration)


def status(database: SchemaDatabase, schema: Schema) -> SchemaStatus:
    with database.transaction() as run:
        if _exists(database, run, quote_identifier(VERSION_TABLE)):
            current, applied_at = _current(database, run, schema, refuse=False)
        else:
            current, applied_at = 0, None
    return SchemaStatus(
        component=schema.component,
        current=current,
        latest=schema.latest,
        pending=schema.migrations[current:],
        applied_at=applied_at,
    )


def check(database: SchemaDatabase, schema: Schema) -> None:
    """Refuses (`SchemaTooNewError`) a schema newer than this code; changes nothing."""
    found = status(database, schema)
    refuse_newer(schema, found.current)


def refuse_newer(schema: Schema, current: int) -> None:
    if current > schema.latest:
        raise SchemaTooNewError(schema.component, current, schema.latest)


def _current(
    database: SchemaDatabase, run: Run, schema: Schema, *, refuse: bool = True
) -> tuple[int, datetime | None]:
    """The schema's version (0: none) and when it was applied; refuses a newer one."""
    rows = run(
        f"SELECT version, applied_at FROM {VERSION_TABLE} WHERE component = %s"
        " ORDER BY version DESC LIMIT 1",
        (schema.component,),
    )
    if not rows:
        return 0, None
    if not _exists(database, run, schema.anchor):
        if refuse:  # migrating: start again
            run(f"DELETE FROM {VERSION_TABLE} WHERE component = %s", (schema.component,))
        return 0, None
    version, applied_at = int(rows[0][0]), datetime.fromisoformat(rows[0][1])
    if refuse:
        refuse_newer(schema, version)
    return version, applied_at


def _exists(database: SchemaDatabase, run: Run, quoted_table: str) -> bool:
    return bool(run(database.table_exists, (quoted_table,))[0][0])


# --- the event store's schema ------------------------------------------------------------

EVENT_STORE_MIGRATIONS = (
    Migration(
        1,
        "event log, unique claims, idempotency records, data keys; the log append-only",
        postgres=(
            "CREATE TABLE IF NOT EXISTS {events} ("
            " position bigint PRIMARY KEY,"
            " stream_id uuid NOT NULL,"
            " stream_version bigint NOT NULL,"
            " stream_type text NOT NULL,"
            " event_type text NOT NULL,"
            " schema_version int NOT NULL,"
            " recorded_at timestamptz NOT NULL,"
            " data bytea NOT NULL,"
            " metadata jsonb NOT NULL,"
            " prev_hash bytea NOT NULL,"
            " hash bytea NOT NULL,"
            " UNIQUE (stream_id, stream_version))",
            "CREATE TABLE IF NOT EXISTS {claims} ("
            " scope text NOT NULL, key text NOT NULL, owner uuid NOT NULL,"
            " PRIMARY KEY (scope, key))",
            "CREATE TABLE IF NOT EXISTS {idempotency} ("
            " key text PRIMARY KEY, request_hash text NOT NULL, result jsonb NOT NULL,"
            " recorded_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE IF NOT EXISTS {data_keys} ("
            " stream_id uuid PRIMARY KEY, wrapped bytea NOT NULL)",
            "CREATE OR REPLACE FUNCTION {refuse_change}() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'eventkeep history is append-only: % on % refused',"
            " TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; END $$",
            "CREATE OR REPLACE TRIGGER {append_only} BEFORE UPDATE OR DELETE ON {events}"
            " FOR EACH ROW EXECUTE FUNCTION {refuse_change}()",
            "CREATE OR REPLACE TRIGGER {no_truncate} BEFORE TRUNCATE ON {events}"
            " FOR EACH STATEMENT EXECUTE FUNCTION {refuse_change}()",
        ),
        sqlite=(
            "CREATE TABLE IF NOT EXISTS {events} ("
            " position INTEGER PRIMARY KEY,"
            " stream_id TEXT NOT NULL,"
            " stream_version INTEGER NOT NULL,"
            " stream_type TEXT NOT NULL,"
            " event_type TEXT NOT NULL,"
            " schema_version INTEGER NOT NULL,"
            " recorded_at TEXT NOT NULL,"
            " data BLOB NOT NULL,"
            " metadata TEXT NOT NULL,"
            " prev_hash BLOB NOT NULL,"
            " hash BLOB NOT NULL,"
            " UNIQUE (stream_id, stream_version))",
            "CREATE TABLE IF NOT EXISTS {claims} ("
            " scope TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL,"
            " PRIMARY KEY (scope, key)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS {idempotency} ("
            " key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, result TEXT NOT NULL,"
            " recorded_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS {data_keys} ("
            " stream_id TEXT PRIMARY KEY, wrapped BLOB NOT NULL) WITHOUT ROWID",
            "CREATE TRIGGER IF NOT EXISTS {no_update} BEFORE UPDATE ON {events}"
            " BEGIN SELECT RAISE(ABORT, 'eventkeep history is append-only'); END",
            "CREATE TRIGGER IF NOT EXISTS {no_delete} BEFORE DELETE ON {events}"
            " BEGIN SELECT RAISE(ABORT, 'eventkeep history is append-only'); END",
        ),
    ),
    Migration(
        2,
        "append function: a batch's checks and writes in one statement (one round trip)",
        # Called by group commit under the log's write lock, in the batch's transaction, with
        # the batch planned on the head it last wrote (eventstore/group_commit.py). Writes
        # nothing and answers 1 when the head moved (another process appended), 2 when a
        # version, a claim held by another owner or an idempotency key is already stored;
        # writes everything and answers 0 otherwise. SECURITY INVOKER: the caller's own
        # privileges apply to every statement (eventstore/roles.py).
        postgres=(
            "CREATE OR REPLACE FUNCTION {append}("
            " expected_position bigint, expected_hash bytea, channel text,"
            " positions bigint[], stream_ids uuid[], versions bigint[], stream_types text[],"
            " event_types text[], schema_versions int[], recorded timestamptz[], datas bytea[],"
            " metadatas text[], prev_hashes bytea[], hashes bytea[],"
            " claim_scopes text[], claim_keys text[], claim_owners uuid[],"
            " idempotency_keys text[], request_hashes text[], results text[], erased uuid[])"
            " RETURNS int LANGUAGE plpgsql AS $$"
            " DECLARE head_position bigint; head_hash bytea;"
            " BEGIN"
            "  SELECT e.position, e.hash INTO head_position, head_hash FROM {events} e"
            "   ORDER BY e.position DESC LIMIT 1;"
            "  IF coalesce(head_position, 0) <> expected_position"
            "   OR (head_hash IS NOT NULL AND head_hash <> expected_hash) THEN RETURN 1; END IF;"
            "  IF EXISTS (SELECT 1 FROM {events} e JOIN unnest(stream_ids, versions) AS t(s, v)"
            "   ON e.stream_id = t.s AND e.stream_version = t.v) THEN RETURN 2; END IF;"
            "  IF EXISTS (SELECT 1 FROM {claims} c"
            "   JOIN unnest(claim_scopes, claim_keys, claim_owners) AS t(s, k, o)"
            "   ON c.scope = t.s AND c.key = t.k WHERE t.o IS NOT NULL AND c.owner <> t.o)"
            "   THEN RETURN 2; END IF;"
            "  IF EXISTS (SELECT 1 FROM {idempotency} i WHERE i.key = ANY(idempotency_keys))"
            "   THEN RETURN 2; END IF;"
            "  INSERT INTO {events} (position, stream_id, stream_version, stream_type,"
            "   event_type, schema_version, recorded_at, data, metadata, prev_hash, hash)"
            "   SELECT p, s, v, st, et, sv, r, d, m::jsonb, ph, h FROM unnest(positions,"
            "   stream_ids, versions, stream_types, event_types, schema_versions, recorded,"
            "   datas, metadatas, prev_hashes, hashes) AS t(p, s, v, st, et, sv, r, d, m, ph, h);"
            "  IF cardinality(positions) > 0 THEN PERFORM pg_notify(channel, ''); END IF;"
            "  DELETE FROM {data_keys} k WHERE k.stream_id = ANY(erased);"
            "  INSERT INTO {claims} (scope, key, owner)"
            "   SELECT s, k, o FROM unnest(claim_scopes, claim_keys, claim_owners) AS t(s, k, o)"
            "   WHERE o IS NOT NULL ON CONFLICT (scope, key) DO UPDATE SET owner = excluded.owner;"
            "  DELETE FROM {claims} c USING unnest(claim_scopes, claim_keys, claim_owners)"
            "   AS t(s, k, o) WHERE t.o IS NULL AND c.scope = t.s AND c.key = t.k;"
            "  INSERT INTO {idempotency} (key, request_hash, result)"
            "   SELECT k, h, r::jsonb FROM unnest(idempotency_keys, request_hashes, results)"
            "   AS t(k, h, r);"
            "  RETURN 0;"
            " END $$",
        ),
        sqlite=(),  # in-process: no round trips to save
    ),
    Migration(
        3,
        "append function with the data keys of the batch's new streams (eventstore/pii.py)",
        # Version 2's function, then the keys: inserted only when it wrote the batch (a key
        # already stored fails the batch, which is then retried one append at a time), and
        # the erased streams' keys deleted again after them (a stream made and erased in one
        # batch, as an import may write, keeps no key). Version 2's function stays, with its
        # own arguments, for the processes of the previous release still running.
        postgres=(
            "CREATE OR REPLACE FUNCTION {append}("
            " expected_position bigint, expected_hash bytea, channel text,"
            " positions bigint[], stream_ids uuid[], versions bigint[], stream_types text[],"
            " event_types text[], schema_versions int[], recorded timestamptz[], datas bytea[],"
            " metadatas text[], prev_hashes bytea[], hashes bytea[],"
            " claim_scopes text[], claim_keys text[], claim_owners uuid[],"
            " idempotency_keys text[], request_hashes text[], results text[], erased uuid[],"
            " key_streams uuid[], key_wrapped bytea[])"
            " RETURNS int LANGUAGE plpgsql AS $$"
            " DECLARE answer int;"
            " BEGIN"
            "  answer := {append}(expected_position, expected_hash, channel, positions,"
            "   stream_ids, versions, stream_types, event_types, schema_versions, recorded,"
            "   datas, metadatas, prev_hashes, hashes, claim_scopes, claim_keys, claim_owners,"
            "   idempotency_keys, request_hashes, results, erased);"
            "  IF answer = 0 AND cardinality(key_streams) > 0 THEN"
            "   INSERT INTO {data_keys} (stream_id, wrapped)"
            "    SELECT s, w FROM unnest(key_streams, key_wrapped) AS t(s, w);"
            "   DELETE FROM {data_keys} k WHERE k.stream_id = ANY(erased);"
            "  END IF;"
            "  RETURN answer;"
            " END $$",
        ),
        sqlite=(),
    ),
)


def event_store_schema(events_table: str, quote: Callable[[str], str]) -> Schema:
    """The event store over `events_table` and its side tables; `quote` makes a name a
    (schema-qualified where the dialect has schemas) identifier."""
    tables = {
        "events": "",
        "claims": "_claims",
        "idempotency": "_idempotency",
        "data_keys": "_data_keys",
    }
    names = {name: quote(events_table + suffix) for name, suffix in tables.items()}
    # Triggers are named by their table (unqualified); the PostgreSQL function is shared.
    for trigger in ("append_only", "no_truncate", "no_update", "no_delete"):
        names[trigger] = quote_identifier(f"{events_table}_{trigger}")
    names["refuse_change"] = quote("eventkeep_refuse_change")
    names["append"] = quote(events_table + "_append")
    return Schema(events_table, EVENT_STORE_MIGRATIONS, names["events"], names)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
