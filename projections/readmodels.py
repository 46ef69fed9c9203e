"""The registered read models over one database, under one table prefix: created together,
fed together, each with its own progress, and swapped one by one.

A batch of events is applied to every read model in ONE transaction, and with it each read
model's progress (`<prefix>progress`: a row per read model and key — `log` for the log feed,
`offset:…`/`watermark:…` for the Kafka feed, `generation` for its tables). A rebuild fills
tables of another prefix beside the live ones and `swap_in` makes them live, read model by
read model, without stopping the feed or the queries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eventkeep.projections.database import Database, PostgresDatabase, SqliteDatabase
from eventkeep.projections.readmodel import Change, ReadModel
from eventkeep.projections.registry import READ_MODELS

log = logging.getLogger(__name__)

LOG = "log"  # progress key: the last log position applied
GENERATION = "generation"  # progress key: the rebuild of the tables now live (0: never)

# Applies the log after the rebuilt tables' position up to (at least) a position, in the
# given transaction.
CatchUp = Callable[[Any, int], None]

# The tables of the release before read models had progress of their own; dropped when met
# (read models are rebuilt, not migrated).
_SHARED_LAYOUT = ("users", "products", "products_fts", "orders", "sales", "stream_versions")


class ReadModels:
    def __init__(
        self, database: Database, prefix: str = "rm_", names: Iterable[str] | None = None
    ) -> None:
        self.db = database
        self.prefix = prefix
        wanted = list(READ_MODELS) if names is None else list(dict.fromkeys(names))
        if unknown := [name for name in wanted if name not in READ_MODELS]:
            raise ValueError(f"no read model named {', '.join(unknown)}")
        self.models: dict[str, ReadModel] = {
            name: READ_MODELS[name].model(database, prefix) for name in wanted
        }

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

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def __getitem__(self, name: str) -> ReadModel:
        return self.models[name]

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def close(self) -> None:
        self.db.close()

    # --- tables ----------------------------------------------------------------------------

    def migrate(self, tag: str | None = None) -> None:
        """Creates, in one transaction, the progress table and each read model's tables that
        do not exist. `tag` names their indexes and triggers (default: the prefix)."""
        self._drop_shared_layout()
        with self.db.transaction() as cursor:
            if not self.db.table_exists(cursor, self.table("progress")):
                cursor.execute(
                    f"CREATE TABLE {self.table('progress')} (projection text NOT NULL,"
                    " key text NOT NULL, value bigint NOT NULL, PRIMARY KEY (projection, key))"
                )
            for model in self.models.values():
                if not model.exists(cursor):
                    for statement in model.schema(tag or self.prefix):
                        cursor.execute(statement)

    def drop(self) -> None:
        """Drops these read models' tables and progress (all of them: the progress table)."""
        with self.db.transaction() as cursor:
            self._drop_tables(cursor)
            progress = self.table("progress")
            if set(self.models) == set(READ_MODELS):
                cursor.execute(f"DROP TABLE IF EXISTS {progress}")
            elif self.db.table_exists(cursor, progress):
                self._delete_progress(cursor, self.names)

    def _drop_tables(self, cursor: Any) -> None:
        for model in self.models.values():
            for name in model.tables():
                cursor.execute(f"DROP TABLE IF EXISTS {self.table(name)}")

    def _drop_shared_layout(self) -> None:
        with self.db.transaction() as cursor:
            progress = self.table("progress")
            if not self.db.table_exists(cursor, progress):
                return
            if "projection" in self.db.columns(cursor, progress):
                return
            log.warning("read models of an older layout under %r dropped: rebuild them", progress)
            for name in (*_SHARED_LAYOUT, "progress"):
                cursor.execute(f"DROP TABLE IF EXISTS {self.table(name)}")

    # --- applying --------------------------------------------------------------------------

    def apply(
        self, events: Sequence[Mapping[str, Any]], progress: Mapping[str, int]
    ) -> list[Change]:
        """Applies upcast envelopes to every read model and records `progress` for each, all
        in one transaction; the rows changed, for the cache."""
        with self.db.transaction() as cursor:
            return self.apply_in(cursor, events, progress)

    def apply_in(
        self, cursor: Any, events: Sequence[Mapping[str, Any]], progress: Mapping[str, int]
    ) -> list[Change]:
        """`apply` within the caller's transaction."""
        names = self.names
        self._lock_progress(cursor, names, [*progress, GENERATION])
        current = self._progress_in(cursor, names)
        changes: list[Change] = []
        for name, model in self.models.items():
            changes += model.apply_in(cursor, events, current[name].get(GENERATION, 0))
        if progress:  # never backwards, even from a late batch of a former partition owner
            table = self.table("progress")
            self.db.insert_rows(
                cursor,
                table,
                ("projection", "key", "value"),
                [(name, key, value) for name in names for key, value in progress.items()],
                "ON CONFLICT (projection, key) DO UPDATE"
                f" SET value = {self.db.greatest}({table}.value, excluded.value)",
            )
        return changes

    def _lock_progress(self, cursor: Any, names: list[str], keys: list[str]) -> None:
        """Serialises batches of the same feed: a projector that lost its Kafka partitions in a
        rebalance and still commits waits here, then sees the new owner's rows."""
        if self.db.kind != "postgres":
            return  # SQLite's BEGIN IMMEDIATE already runs one writer at a time
        table = self.table("progress")
        pairs = [(name, key) for name in names for key in dict.fromkeys(keys)]
        self.db.insert_rows(
            cursor,
            table,
            ("projection", "key", "value"),
            [(name, key, 0) for name, key in pairs],
            "ON CONFLICT (projection, key) DO NOTHING",
        )
        cursor.execute(
            f"SELECT 1 FROM {table} WHERE projection = ANY(%s) AND key = ANY(%s) FOR UPDATE",
            (names, list(dict.fromkeys(keys))),
        )

    # --- progress --------------------------------------------------------------------------

    def _progress_in(self, cursor: Any, names: list[str]) -> dict[str, dict[str, int]]:
        cursor.execute(f"SELECT projection, key, value FROM {self.table('progress')}")
        found: dict[str, dict[str, int]] = {name: {} for name in names}
        for row in cursor.fetchall():
            if row["projection"] in found:
                found[row["projection"]][row["key"]] = row["value"]
        return found

    def _delete_progress(self, cursor: Any, names: list[str]) -> None:
        where, params = self.db.in_list("projection", names)
        cursor.execute(f"DELETE FROM {self.table('progress')} WHERE {where}", params)

    def progress_by_name(self) -> dict[str, dict[str, int]]:
        """Each read model's progress keys."""
        with self.db.reading() as cursor:
            return self._progress_in(cursor, self.names)

    def progress(self, name: str) -> dict[str, int]:
        return self.progress_by_name()[name]

    def seed_progress(self, keys: Sequence[str]) -> None:
        """Adds `keys` at 0 where missing, for every read model (a Kafka partition not heard
        from yet counts in the position)."""
        with self.db.transaction() as cursor:
            cursor.executemany(
                f"INSERT INTO {self.table('progress')} (projection, key, value)"
                " VALUES (%s, %s, 0) ON CONFLICT (projection, key) DO NOTHING",
                [(name, key) for name in self.names for key in keys],
            )

    def position(self, name: str | None = None) -> int:
        """Every event at or below this position is applied (to `name`, or to all)."""
        progress = self.progress_by_name()
        if name is not None:
            return position_of(progress[name])
        return min((position_of(p) for p in progress.values()), default=0)

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every read model, in key order: to compare two builds of them."""
        tables: dict[str, list[dict[str, Any]]] = {}
        with self.db.reading() as cursor:
            for model in self.models.values():
                tables |= model.dump(cursor)
        return tables

    # --- swapping a rebuild in -------------------------------------------------------------

    def swap_in(self, rebuilt: ReadModels, catch_up: CatchUp) -> dict[str, int]:
        """Makes `rebuilt`'s read models (tables of another prefix, same database) the live
        ones, in one transaction: writers wait, readers go on until the renames. The other
        read models are left as they are.

        Under the lock, `rebuilt` is caught up to the furthest position the live tables may
        hold, then takes over their feed progress: so the live feed goes on from the swap
        point with no gap (it resumes at the live offsets) and no duplicate (anything older
        is already there, and skipped by stream version). Returns each one's new generation.
        """
        names = rebuilt.names
        retired = ReadModels(self.db, f"retired_{self.prefix}", names)
        generations: dict[str, int] = {}
        with self.db.transaction() as cursor:
            if self.db.kind == "postgres":
                cursor.execute(f"LOCK TABLE {self.table('progress')} IN EXCLUSIVE MODE")
            live = self._progress_in(cursor, names)
            furthest = max(
                (
                    value
                    for progress in live.values()
                    for key, value in progress.items()
                    if key == LOG or key.startswith("watermark:")
                ),
                default=0,
            )
            catch_up(cursor, furthest)
            built = rebuilt._progress_in(cursor, names)
            self._delete_progress(cursor, names)
            rebuilt._delete_progress(cursor, names)
            for name in names:
                taken_over = {k: v for k, v in live[name].items() if k != GENERATION}
                taken_over[LOG] = max(built[name].get(LOG, 0), live[name].get(LOG, 0))
                # Unique over time, not only larger: tables dropped and rebuilt from scratch
                # never meet cache entries of an earlier life.
                generations[name] = max(
                    live[name].get(GENERATION, 0) + 1, time.time_ns() // 1_000_000
                )
                cursor.executemany(
                    f"INSERT INTO {self.table('progress')} (projection, key, value)"
                    " VALUES (%s, %s, %s)",
                    [
                        (name, k, v)
                        for k, v in (*taken_over.items(), (GENERATION, generations[name]))
                    ],
                )
                for table in self.models[name].tables():
                    if self.db.table_exists(cursor, self.table(table)):
                        cursor.execute(
                            f"ALTER TABLE {self.table(table)} RENAME TO {retired.table(table)}"
                        )
                    cursor.execute(
                        f"ALTER TABLE {rebuilt.table(table)} RENAME TO {self.table(table)}"
                    )
        with self.db.transaction() as cursor:
            retired._drop_tables(cursor)
        return generations


def position_of(progress: Mapping[str, int]) -> int:
    """The furthest position every event up to which is applied: the log feed's own, or the
    smallest Kafka partition watermark, whichever is further (after a rebuild was swapped
    in, a distributed read model has both)."""
    watermarks = [v for k, v in progress.items() if k.startswith("watermark:")]
    return max(progress.get(LOG, 0), min(watermarks, default=0))
