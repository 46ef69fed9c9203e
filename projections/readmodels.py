"""Read models: tables tuned for each query shape, kept by applying batches of events.

A batch is applied in ONE transaction: the rows it touches are read, the events folded into
them (`projections/folding.py`), and the rows, the streams' applied versions and the feed's
progress written back. An event whose stream version is not above the one already applied
changes nothing, so a redelivered batch (Kafka after a crash, a relay re-send) has no effect
twice. Table names carry a prefix, so a rebuild can fill fresh tables beside the live ones.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from eventkeep.projections.cursors import (  # InvalidCursor: for its callers
    InvalidCursor,  # noqa: F401
    decode_cursor,
    encode_cursor,
)
from eventkeep.projections.database import Database, PostgresDatabase, SqliteDatabase
from eventkeep.projections.folding import KIND_OF_STREAM, Batch, fold, from_cents, to_cents
from eventkeep.projections.schema import COLUMNS, TABLES, schema_statements


@dataclass(frozen=True)
class Change:
    """A read-model row a batch changed, for the cache to forget after the commit; in the
    generation of the tables it was written to (each swapped-in rebuild is a new one)."""

    kind: str
    id: str
    version: int
    generation: int = 0


GENERATION = "generation"  # progress key: how many rebuilds were swapped into these tables


# Beside the tables of TABLES; the FTS index exists in SQLite only.
OTHER_TABLES = ("products_fts", "sales", "stream_versions", "progress")

# Applies the log after the rebuilt tables' position up to (at least) a position, in the
# given transaction.
CatchUp = Callable[[Any, int], None]


SORTS = {
    "name": (("name", "asc"),),
    "price": (("price_cents", "asc"),),
    "-price": (("price_cents", "desc"),),
    "newest": (("created_at", "desc"),),
}


class ReadModels:
    def __init__(self, database: Database, prefix: str = "rm_") -> None:
        self.db = database
        self.prefix = prefix

    @classmethod
    def open(
        cls,
        *,
        sqlite_path: Path | str | None = None,
        postgres_url: str | None = None,
        prefix: str = "rm_",
    ) -> ReadModels:
        if postgres_url is not None:
            return cls(PostgresDatabase(postgres_url), prefix)
        assert sqlite_path is not None, "give sqlite_path or postgres_url"
        return cls(SqliteDatabase(sqlite_path), prefix)

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def migrate(self, tag: str | None = None) -> None:
        """Creates the tables, in one transaction, unless they exist. `tag` names their indexes
        and triggers (default: the prefix); a rebuild gives each build its own."""
        with self.db.transaction() as cursor:
            if self.db.table_exists(cursor, self.table("progress")):
                return
            for statement in schema_statements(self.db.kind, self.prefix, tag or self.prefix):
                cursor.execute(statement)

    def drop(self) -> None:
        with self.db.transaction() as cursor:
            for name in (*TABLES.values(), *OTHER_TABLES):
                cursor.execute(f"DROP TABLE IF EXISTS {self.table(name)}")

    def close(self) -> None:
        self.db.close()

    # --- writing ---------------------------------------------------------------------------

    def apply(
        self, events: Sequence[Mapping[str, Any]], progress: Mapping[str, int]
    ) -> list[Change]:
        """Applies upcast envelopes and records `progress`, all in one transaction."""
        with self.db.transaction() as cursor:
            return self.apply_in(cursor, events, progress)

    def apply_in(
        self, cursor: Any, events: Sequence[Mapping[str, Any]], progress: Mapping[str, int]
    ) -> list[Change]:
        """`apply` within the caller's transaction."""
        self._lock_progress(cursor, [*progress, GENERATION])
        cursor.execute(f"SELECT value FROM {self.table('progress')} WHERE key = %s", (GENERATION,))
        row = cursor.fetchone()
        generation = row["value"] if row else 0
        stream_ids = list({e["stream_id"] for e in events})
        applied = self._applied_versions(cursor, stream_ids)
        batch = self._load_rows(cursor, events)
        moved: dict[str, int] = {}
        for event in events:
            stream_id, version = event["stream_id"], event["stream_version"]
            if version <= applied.get(stream_id, 0):
                continue  # already applied: a redelivery
            fold(batch, dict(event))
            applied[stream_id] = moved[stream_id] = version
        self._write(cursor, batch, moved, progress)
        return [
            Change(kind, row_id, version, generation)
            for (kind, row_id), version in batch.changed.items()
        ]

    def swap_in(self, rebuilt: ReadModels, catch_up: CatchUp) -> int:
        """Makes `rebuilt` (tables of another prefix, same database) the live tables, in one
        transaction: writers wait, readers go on until the renames.

        Under the lock, `rebuilt` is caught up to the furthest position the live tables may
        hold, then takes over their feed progress: so the live projector goes on from the
        swap point with no gap (it resumes at the live offsets) and no duplicate (anything
        older is already there, and skipped by stream version). Returns the new generation.
        """
        retired = ReadModels(self.db, f"retired_{self.prefix}")
        with self.db.transaction() as cursor:
            if self.db.kind == "postgres":
                cursor.execute(f"LOCK TABLE {self.table('progress')} IN EXCLUSIVE MODE")
            live = self._progress_in(cursor)
            furthest = max(
                [v for k, v in live.items() if k == "log" or k.startswith("watermark:")],
                default=0,
            )
            catch_up(cursor, furthest)
            rebuilt_log = rebuilt._progress_in(cursor).get("log", 0)
            taken_over = {k: v for k, v in live.items() if k != GENERATION}
            taken_over["log"] = max(rebuilt_log, live.get("log", 0))
            # Unique over time, not only larger: tables dropped and rebuilt from scratch never
            # meet cache entries of an earlier life.
            generation = max(live.get(GENERATION, 0) + 1, time.time_ns() // 1_000_000)
            table = rebuilt.table("progress")
            cursor.execute(f"DELETE FROM {table}")
            cursor.executemany(
                f"INSERT INTO {table} (key, value) VALUES (%s, %s)",
                [*taken_over.items(), (GENERATION, generation)],
            )
            for name in (*TABLES.values(), *OTHER_TABLES):
                if self.db.table_exists(cursor, self.table(name)):
                    cursor.execute(
                        f"ALTER TABLE {self.table(name)} RENAME TO {retired.table(name)}"
                    )
                if self.db.table_exists(cursor, rebuilt.table(name)):
                    cursor.execute(
                        f"ALTER TABLE {rebuilt.table(name)} RENAME TO {self.table(name)}"
                    )
        retired.drop()
        return generation

    def _progress_in(self, cursor: Any) -> dict[str, int]:
        cursor.execute(f"SELECT key, value FROM {self.table('progress')}")
        return {row["key"]: row["value"] for row in cursor.fetchall()}

    def _lock_progress(self, cursor: Any, keys: list[str]) -> None:
        """Serialises batches of the same feed: a projector that lost its Kafka partitions in a
        rebalance and still commits waits here, then sees the new owner's stream versions."""
        if self.db.kind != "postgres" or not keys:
            return  # SQLite's BEGIN IMMEDIATE already runs one writer at a time
        table = self.table("progress")
        cursor.executemany(
            f"INSERT INTO {table} (key, value) VALUES (%s, 0) ON CONFLICT (key) DO NOTHING",
            [(key,) for key in keys],
        )
        cursor.execute(f"SELECT key FROM {table} WHERE key = ANY(%s) FOR UPDATE", (keys,))

    def _applied_versions(self, cursor: Any, stream_ids: list[str]) -> dict[str, int]:
        if not stream_ids:
            return {}
        where, params = self.db.in_list("stream_id", stream_ids)
        cursor.execute(
            f"SELECT stream_id, version FROM {self.table('stream_versions')} WHERE {where}",
            params,
        )
        return {row["stream_id"]: row["version"] for row in cursor.fetchall()}

    def _load_rows(self, cursor: Any, events: Sequence[Mapping[str, Any]]) -> Batch:
        batch = Batch()
        ids: dict[str, set[str]] = defaultdict(set)
        for event in events:
            ids[KIND_OF_STREAM[event["stream_type"]]].add(event["stream_id"])
        for kind, wanted in ids.items():
            where, params = self.db.in_list("id", sorted(wanted))
            cursor.execute(f"SELECT * FROM {self.table(TABLES[kind])} WHERE {where}", params)
            for row in cursor.fetchall():
                batch.rows[kind][row["id"]] = _decoded(row)
        return batch

    def _write(
        self, cursor: Any, batch: Batch, moved: dict[str, int], progress: Mapping[str, int]
    ) -> None:
        insert = self.db.insert_rows
        for kind, rows in batch.rows.items():
            changed = [row for row_id, row in rows.items() if (kind, row_id) in batch.changed]
            if changed:
                columns = COLUMNS[kind]
                insert(
                    cursor,
                    self.table(TABLES[kind]),
                    columns,
                    [_encoded(row, columns) for row in changed],
                    _on_conflict_replace(columns, ("id",)),
                )
        if batch.sales:
            table = self.table("sales")
            insert(
                cursor,
                table,
                ("day", "product_id", "currency", "units", "revenue_cents"),
                [(*key, units, revenue) for key, (units, revenue) in batch.sales.items()],
                "ON CONFLICT (day, product_id, currency) DO UPDATE"
                f" SET units = {table}.units + excluded.units,"
                f" revenue_cents = {table}.revenue_cents + excluded.revenue_cents",
            )
        if moved:
            columns = ("stream_id", "version")
            insert(
                cursor,
                self.table("stream_versions"),
                columns,
                list(moved.items()),
                _on_conflict_replace(columns, ("stream_id",)),
            )
        if progress:  # never backwards, even from a late batch of a former partition owner
            table = self.table("progress")
            insert(
                cursor,
                table,
                ("key", "value"),
                list(progress.items()),
                "ON CONFLICT (key) DO UPDATE"
                f" SET value = {self.db.greatest}({table}.value, excluded.value)",
            )

    # --- progress --------------------------------------------------------------------------

    def progress(self) -> dict[str, int]:
        with self.db.reading() as cursor:
            return self._progress_in(cursor)

    def seed_progress(self, keys: Sequence[str]) -> None:
        """Adds `keys` at 0 where missing (a Kafka partition not heard from yet)."""
        with self.db.transaction() as cursor:
            cursor.executemany(
                f"INSERT INTO {self.table('progress')} (key, value) VALUES (%s, 0)"
                " ON CONFLICT (key) DO NOTHING",
                [(key,) for key in keys],
            )

    def position(self) -> int:
        """Every event at or below this position is applied."""
        return position_of(self.progress())

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every read model, in key order: to compare two builds of them."""
        keys = {**{name: "id" for name in TABLES.values()}, "sales": "day, product_id, currency"}
        tables: dict[str, list[dict[str, Any]]] = {}
        with self.db.reading() as cursor:
            for name, key in keys.items():
                cursor.execute(f"SELECT * FROM {self.table(name)} ORDER BY {key}")
                tables[name] = [_decoded(row) for row in cursor.fetchall()]
        return tables

    # --- queries ---------------------------------------------------------------------------

    def get(self, kind: str, row_id: str) -> dict[str, Any] | None:
        with self.db.reading() as cursor:
            cursor.execute(f"SELECT * FROM {self.table(TABLES[kind])} WHERE id = %s", (row_id,))
            row = cursor.fetchone()
        return None if row is None else shown(kind, _decoded(row))

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        with self.db.reading() as cursor:
            cursor.execute(
                f"SELECT * FROM {self.table('users')} WHERE lower(email) = %s", (email.lower(),)
            )
            row = cursor.fetchone()
        return None if row is None else shown("user", row)

    def search_products(
        self,
        *,
        q: str | None = None,
        category: str | None = None,
        min_price: str | None = None,
        max_price: str | None = None,
        sort: str = "name",
        cursor: str | None = None,
        limit: int = 20,
    ) -> tuple[list[dict[str, Any]], str | None]:
        table = self.table("products")
        where, params = ["true"], []
        if q and (match := self._text_match(table, q)) is not None:
            where.append(match[0])
            params.append(match[1])
        if category is not None:
            where.append("category = %s")
            params.append(category)
        if min_price is not None:
            where.append("price_cents >= %s")
            params.append(to_cents(min_price))
        if max_price is not None:
            where.append("price_cents <= %s")
            params.append(to_cents(max_price))
        ((column, direction),) = SORTS[sort]
        return self._page("product", table, where, params, column, direction, cursor, limit)

    def orders_of_user(
        self, user_id: str, *, status: str | None, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        table = self.table("orders")
        where, params = ["user_id = %s"], [user_id]
        if status is not None:
            where.append("status = %s")
            params.append(status)
        return self._page("order", table, where, params, "placed_at", "desc", cursor, limit)

    def sales(self, *, start: str, end: str, product_id: str | None = None) -> list[dict[str, Any]]:
        where, params = ["day >= %s", "day <= %s"], [start, end]
        if product_id is not None:
            where.append("product_id = %s")
            params.append(product_id)
        with self.db.reading() as db:
            db.execute(
                f"SELECT day, product_id, currency, units, revenue_cents FROM"
                f" {self.table('sales')} WHERE {' AND '.join(where)}"
                " ORDER BY day, product_id, currency",
                params,
            )
            rows = db.fetchall()
        return [
            {
                "day": row["day"],
                "product_id": row["product_id"],
                "units": row["units"],
                "revenue": from_cents(row["revenue_cents"]),
                "currency": row["currency"],
            }
            for row in rows
        ]

    def _text_match(self, table: str, q: str) -> tuple[str, str] | None:
        if self.db.kind == "postgres":
            return "search @@ websearch_to_tsquery('english', %s)", q
        words = [w for w in "".join(c if c.isalnum() else " " for c in q).split() if w]
        if not words:
            return None
        match = " ".join(f'"{word}"' for word in words)
        return f"rowid IN (SELECT rowid FROM {table}_fts WHERE {table}_fts MATCH %s)", match

    def _page(
        self,
        kind: str,
        table: str,
        where: list[str],
        params: list[Any],
        column: str,
        direction: str,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Keyset pagination on (column, id): stable under concurrent writes, no OFFSET."""
        if cursor is not None:
            after = decode_cursor(cursor, column)
            where.append(f"({column}, id) {'>' if direction == 'asc' else '<'} (%s, %s)")
            params.extend(after)
        order = f"{column} {direction}, id {direction}"
        with self.db.reading() as db:
            db.execute(
                f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT %s",
                [*params, limit + 1],
            )
            rows = [_decoded(row) for row in db.fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1][column], rows[-1]["id"]) if more else None
        return [shown(kind, row) for row in rows], next_cursor


def position_of(progress: Mapping[str, int]) -> int:
    """The furthest position every event up to which is applied: the log feed's own, or the
    smallest Kafka partition watermark, whichever is further (after a rebuild was swapped
    in, a distributed read model has both)."""
    watermarks = [v for k, v in progress.items() if k.startswith("watermark:")]
    return max(progress.get("log", 0), min(watermarks, default=0))


def shown(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row as the query API answers it: money as decimal strings."""
    answer = {k: v for k, v in row.items() if k not in ("search", "updated_at")}
    for cents in ("price_cents", "total_cents"):
        if cents in answer:
            answer[cents.removesuffix("_cents")] = from_cents(answer.pop(cents))
    return answer


def _on_conflict_replace(columns: Sequence[str], key: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


def _encoded(row: dict[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    return tuple(orjson.dumps(row[c]).decode() if c == "lines" else row.get(c) for c in columns)


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("lines"), str):
        row["lines"] = orjson.loads(row["lines"])
    row.pop("search", None)
    return row
