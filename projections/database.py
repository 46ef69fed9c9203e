"""The two databases read models live in, behind one small interface: transactions, cursors
that return dict rows, `%s` parameters, and the few SQL spellings that differ.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from eventkeep.eventstore.pools import check_and_sweep


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...

    def fetchall(self) -> list[dict[str, Any]]: ...

    def fetchone(self) -> dict[str, Any] | None: ...


class Database(Protocol):
    kind: str  # "postgres" | "sqlite"
    greatest: str  # the SQL function of the larger of two values

    def transaction(self, *, pipelined: bool = False) -> Any:
        """A context manager: a cursor inside one transaction, committed on success.
        `pipelined`: statements are sent without waiting for each one's answer, until a
        result is fetched or the transaction ends (one round trip for several statements);
        an error is raised there, not by the statement that failed."""
        ...

    def reading(self, *, custom_plans: bool = False) -> Any:
        """A context manager: a cursor for queries. With `custom_plans`, each statement is
        planned for its own values, never prepared once for all (a search's best plan depends
        on whether its words are rare)."""
        ...

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`column` is one of `values`, and the parameters that says so."""
        ...

    def table_exists(self, cursor: Any, name: str) -> bool: ...

    def columns(self, cursor: Any, table: str) -> set[str]: ...

    def insert_rows(
        self,
        cursor: Any,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> None:
        """`INSERT INTO table (columns) <rows> <conflict>`; the rows' keys are distinct."""
        ...

    def forget_overwritten(self) -> None:
        """After a transaction that overwrote personal data (an erasure): no older copy of
        the rows is left in the database's own files where this database can see to it."""
        ...

    def copy_rows(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Loads new rows (no key already in `table`) the fastest way the database has."""
        ...

    def tidy(self, tables: Sequence[str]) -> None:
        """After a bulk load into `tables` that live writes follow: their statistics and
        visibility made now, not by the database's own upkeep in the live writes' first
        seconds."""
        ...

    def close(self) -> None: ...


# Integer columns of the built-in read models; another column is an integer column when its
# values are integers (so a new read model needs nothing here), else text.
_ARRAY_TYPES = {
    name: "bigint[]"
    for name in (
        "version", "price_cents", "stock", "total_cents", "units", "revenue_cents", "value",
    )
}  # fmt: skip


def _array_type(column: str, values: Sequence[Any]) -> str:
    if column in _ARRAY_TYPES:
        return _ARRAY_TYPES[column]
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "bigint[]"
    return "text[]"


def _plan_for_memory(connection: psycopg.Connection[Any]) -> None:
    """Read models are read from memory (shared buffers, the page cache): a page read out of
    order costs about what one read in order does, not PostgreSQL's default four times as
    much. Planned with the default, a search walked an index in its order, filtering (the
    whole shop's, whose rows lie in that order on disk, 10x the rows of its category's), and
    read every row of the shop for the matches of a word (a sequential scan, 40 ms, against 12
    through the text index)."""
    connection.execute("SET random_page_cost = 1.1")


class PostgresDatabase:
    kind = "postgres"
    greatest = "GREATEST"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        timeout: float = 5.0,
        check: Callable[[psycopg.Connection[Any]], None] = check_and_sweep,
        reset: Callable[[psycopg.Connection[Any]], None] | None = None,
    ) -> None:
        self.url = url  # for another process to open it (a rebuild's workers)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=True,
            check=check,  # dead connections (a PostgreSQL restart) never lent
            reset=reset,
            configure=_plan_for_memory,
        )

    @contextmanager
    def transaction(self, *, pipelined: bool = False) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        with self._pool.connection() as connection:
            try:
                pipeline = connection.pipeline() if pipelined else nullcontext()
                with pipeline, connection.transaction():
                    yield connection.cursor(row_factory=dict_row)
            except BaseException:
                if pipelined:
                    # After an error in a pipeline, psycopg may take for prepared a statement
                    # the server never prepared ("prepared statement … does not exist" on
                    # its next use): the connection is dropped, the pool opens another.
                    connection.close()
                raise

    @contextmanager
    def reading(self, *, custom_plans: bool = False) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        with self._pool.connection() as connection:
            if not custom_plans:
                yield connection.cursor(row_factory=dict_row)
                return
            # psycopg prepares a statement run 5 times on a connection; PostgreSQL then plans
            # it once for any values (a generic plan), which for a search sorts every match
            # of a common word (35 ms at 100k products against 0.5 ms planned for its values).
            threshold = connection.prepare_threshold
            connection.prepare_threshold = None
            try:
                yield connection.cursor(row_factory=dict_row)
            finally:
                connection.prepare_threshold = threshold

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%b)", [list(values)]

    def table_exists(self, cursor: Any, name: str) -> bool:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (name,))
        return bool(cursor.fetchone()["found"])

    def columns(self, cursor: Any, table: str) -> set[str]:
        cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return {row["column_name"] for row in cursor.fetchall()}

    def insert_rows(
        self,
        cursor: Any,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> None:
        """One statement for all rows, a column array each (`unnest`): one round trip and
        one plan, where a row per statement costs a round trip each."""
        by_column = [list(values) for values in zip(*rows, strict=True)]
        arrays = ", ".join(
            f"%b::{_array_type(column, values)}"
            for column, values in zip(columns, by_column, strict=True)
        )
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) {conflict}",
            by_column,
        )

    def forget_overwritten(self) -> None:
        """Nothing here: PostgreSQL's dead row versions are its VACUUM's (docs/security.md)."""

    def copy_rows(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """COPY in binary: no SQL to parse per row, values sent in their wire form (the
        column types read from the catalog, which binary COPY needs)."""
        cursor.execute(
            "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
        types = {row["attname"]: row["type"] for row in cursor.fetchall()}
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([types[column] for column in columns])
            for row in rows:
                copy.write_row(row)

    def tidy(self, tables: Sequence[str]) -> None:
        """VACUUM (ANALYZE): autovacuum would take up a freshly loaded table (its inserts
        past the threshold) while the projector's first live batches write to it, and those
        batches would set each loaded page's hint bits themselves (P2's first round after a
        catch-up waited twice as long on PostgreSQL, with autovacuum running)."""
        with self._pool.connection() as connection:  # autocommit: VACUUM runs outside one
            connection.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")

    def close(self) -> None:
        self._pool.close()


class _SqliteCursor:
    """sqlite3 with `%s` parameters and dict rows, like psycopg's cursor here."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _SqliteCursor:
        self._cursor.execute(sql.replace("%s", "?"), params)
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql.replace("%s", "?"), rows)

    def fetchall(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._cursor.fetchall()]

    def fetchone(self) -> dict[str, Any] | None:
        row = self._cursor.fetchone()
        return None if row is None else dict(row)


class SqliteDatabase:
    """One connection per thread (WAL: readers never wait for the projector's writes)."""

    kind = "sqlite"
    greatest = "max"

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=30
            )
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            # An erased user's old row is overwritten, not left in the file's free pages.
            connection.execute("PRAGMA secure_delete=ON")
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    @contextmanager
    def transaction(self, *, pipelined: bool = False) -> Iterator[_SqliteCursor]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteCursor(connection.cursor())
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextmanager
    def reading(self, *, custom_plans: bool = False) -> Iterator[_SqliteCursor]:
        # SQLite plans each statement as it is prepared, with its values bound (`custom_plans`
        # is what it always does).
        yield _SqliteCursor(self._connection().cursor())

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({','.join('?' * len(values)) or 'NULL'})", list(values)

    def table_exists(self, cursor: Any, name: str) -> bool:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", (name,))
        return cursor.fetchone() is not None

    def columns(self, cursor: Any, table: str) -> set[str]:
        cursor.execute(f"PRAGMA table_info({table})")
        return {row["name"] for row in cursor.fetchall()}

    def insert_rows(
        self,
        cursor: Any,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> None:
        values = ", ".join("%s" for _ in columns)
        cursor.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) {conflict}", rows
        )

    def forget_overwritten(self) -> None:
        """The write-ahead log's frames hold the rows' older versions: copied back into the
        file (where secure_delete overwrote them) and the log truncated, as the event store
        does after an erasure (`eventstore/sqlite.py`). Waits for readers (busy timeout)."""
        self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def tidy(self, tables: Sequence[str]) -> None:
        """Nothing: SQLite does no upkeep of its own to get ahead of."""

    def copy_rows(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """SQLite has no COPY: one prepared INSERT run over every row (in the caller's
        transaction, into a table whose indexes come after)."""
        values = ", ".join("%s" for _ in columns)
        cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})", rows)

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
        self._local = threading.local()
