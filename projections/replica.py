"""Queries answered from a streaming replica of the read models' database, when it is there and
has applied what they ask for.

A hot standby replays the primary's WAL: its progress rows (`<prefix>progress`, written in the
same transactions as the read models' rows) are its own applied position, read there by a
`PolledProgress` of its own. A query that asks for X-Min-Position P is answered from the replica
once the replica's position of the read model it reads is >= P, waiting at most `wait` seconds
for it; otherwise it goes to the primary (and waits there, bounded as before). A replica that
cannot be read (its progress not read for `stale_after` seconds, or a query on it failed) sends
every query to the primary until its progress is read again; a query that fails on the replica
mid-way (or that the standby cancels to replay the primary's WAL) is run again on the primary.
Each counts in `eventkeep_replica_fallbacks` by reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from eventkeep.metrics import REPLICA_FALLBACKS, REPLICA_QUERIES
from eventkeep.projections.database import Cursor, Database
from eventkeep.projections.queries import PolledProgress, Queries

# The replica's connection failed (it is stopped, unreachable, or restarting): not the query's
# fault, so the primary answers it.
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
# The standby cancelled the statement to replay the primary's WAL (a lock it needs, e.g. a
# rebuild's swap dropping tables; SQLSTATE 40001 "conflict with recovery"): the replica is fine,
# this one statement goes to the primary.
RECOVERY_CONFLICT = psycopg.errors.SerializationFailure


class ReplicaHealth:
    """Whether the replica is worth asking: its progress was read within `stale_after` seconds
    and no query failed on it since."""

    def __init__(self, progress: PolledProgress, stale_after: float = 2.0) -> None:
        self.progress = progress
        self._stale_after = stale_after
        self._failed_at = float("-inf")  # monotonic; a float's assignment needs no lock

    @property
    def up(self) -> bool:
        read_at = self.progress.read_at
        return read_at > self._failed_at and time.monotonic() - read_at < self._stale_after

    def failed(self) -> None:
        self._failed_at = time.monotonic()


class FallbackDatabase:
    """The replica's database for queries: each `reading()` cursor runs on the replica and, when
    the replica's connection fails (or it is known down), on the primary instead. Everything
    else (writes included: a standby refuses them) is the primary's."""

    def __init__(self, replica: Database, primary: Database, health: ReplicaHealth) -> None:
        self.replica = replica
        self.primary = primary
        self.health = health
        self.kind = replica.kind
        self.greatest = replica.greatest

    @contextmanager
    def reading(self, *, custom_plans: bool = False) -> Iterator[Cursor]:
        with ExitStack() as stack:
            yield _FallbackCursor(self, stack, custom_plans)

    def transaction(self, *, pipelined: bool = False) -> Any:
        return self.primary.transaction(pipelined=pipelined)

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return self.replica.in_list(column, values)

    def table_exists(self, cursor: Any, name: str) -> bool:
        return self.primary.table_exists(cursor, name)

    def columns(self, cursor: Any, table: str) -> set[str]:
        return self.primary.columns(cursor, table)

    def insert_rows(
        self,
        cursor: Any,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> None:
        self.primary.insert_rows(cursor, table, columns, rows, conflict)

    def copy_rows(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        self.primary.copy_rows(cursor, table, columns, rows)

    def forget_overwritten(self) -> None:
        self.primary.forget_overwritten()

    def tidy(self, tables: Sequence[str]) -> None:
        self.primary.tidy(tables)

    def close(self) -> None:
        self.replica.close()  # the primary's is its own ReadModels' to close


class _FallbackCursor:
    """A cursor on the replica until one of its statements cannot reach it; then, for the
    rest of the `reading()`, on the primary (whose read models are at least as far)."""

    def __init__(self, database: FallbackDatabase, stack: ExitStack, custom_plans: bool) -> None:
        self._database = database
        self._stack = stack
        self._custom_plans = custom_plans
        self._cursor: Cursor | None = None
        self._on_primary = False

    def _to_primary(self) -> Cursor:
        primary = self._database.primary.reading(custom_plans=self._custom_plans)
        self._cursor = self._stack.enter_context(primary)
        self._on_primary = True
        return self._cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._on_primary:
            assert self._cursor is not None
            return self._cursor.execute(sql, params)
        if not self._database.health.up:
            REPLICA_FALLBACKS.labels("unreachable").inc()
            return self._to_primary().execute(sql, params)
        try:
            if self._cursor is None:
                self._cursor = self._stack.enter_context(
                    self._database.replica.reading(custom_plans=self._custom_plans)
                )
            return self._cursor.execute(sql, params)
        except RECOVERY_CONFLICT:
            REPLICA_FALLBACKS.labels("conflict").inc()
        except UNREACHABLE:
            self._database.health.failed()
            REPLICA_FALLBACKS.labels("unreachable").inc()
        return self._to_primary().execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        raise TypeError("the replica's cursor only reads")

    def fetchall(self) -> list[dict[str, Any]]:
        assert self._cursor is not None, "execute first"
        return self._cursor.fetchall()

    def fetchone(self) -> dict[str, Any] | None:
        assert self._cursor is not None, "execute first"
        return self._cursor.fetchone()


class ReplicaReads:
    """Picks, per query, the replica's queries or the primary's (see the module's docstring)."""

    def __init__(
        self,
        primary: Queries,
        replica: Queries,
        health: ReplicaHealth,
        *,
        wait: float,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.health = health
        self._wait = wait

    async def choose(self, wanted: int, timeout: float, name: str | None) -> tuple[Queries, int]:
        """The queries to answer from once `name` (None: every read model) reached `wanted`,
        and where it was; below `wanted` when neither database reached it within `timeout`."""
        started = time.monotonic()
        if self.health.up:
            # Not waited on once it is found down (stopped, or its progress no longer read).
            reached = await self.replica.reach(
                wanted, min(timeout, self._wait), name, while_=lambda: self.health.up
            )
            if reached >= wanted and self.health.up:
                REPLICA_QUERIES.labels("replica").inc()
                return self.replica, reached
            REPLICA_FALLBACKS.labels("behind" if self.health.up else "unreachable").inc()
        else:
            REPLICA_FALLBACKS.labels("unreachable").inc()
        REPLICA_QUERIES.labels("primary").inc()
        remaining = max(0.0, timeout - (time.monotonic() - started))
        return self.primary, await self.primary.reach(wanted, remaining, name)

    def lag(self) -> Mapping[str, int]:
        """Events each read model's replica copy is behind the primary's (from memory)."""
        return {
            name: max(0, self.primary.position(name) - self.replica.position(name))
            for name in self.primary.names
        }
