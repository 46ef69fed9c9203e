"""The registered read models over one database, under one table prefix: created together,
fed together, each with its own progress, and swapped one by one.

A batch of events is applied to every read model in ONE transaction, and with it their
progress (`<prefix>progress`: a row per read model and key — `log` for the log feed,
`generation` for its tables — and the Kafka feed's `offset:…`/`watermark:…`/`cached:…` once
per feed, in rows named after the read models it feeds: `feed:orders+products+…`; each read
model's progress is its own rows and those of every feed that names it). A rebuild fills
tables of another prefix beside the live ones and `swap_in` makes them live, read model by
read model, without stopping the feed or the queries.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg

from eventkeep.domain.catalog import ERASING_EVENT
from eventkeep.eventstore.pools import check_and_sweep, check_unless_recent, note_given_back
from eventkeep.metrics import QUARANTINE_SIZE, QUARANTINED
from eventkeep.projections import feed_refusals
from eventkeep.projections.database import Database, PostgresDatabase, SqliteDatabase
from eventkeep.projections.feed_refusals import RefusedMessage
from eventkeep.projections.readmodel import Change, Envelope, Fill, ReadModel
from eventkeep.projections.registry import READ_MODELS

log = logging.getLogger(__name__)

LOG = "log"  # progress key: the last log position applied
GENERATION = "generation"  # progress key: the rebuild of the tables now live (0: never)
# Progress key: its tables were created for a bulk load, their indexes and triggers not yet
# (built after the load, `build_deferred`; kept across a crash, so a resumed load builds them).
INDEXES_PENDING = "indexes_pending"
# Keys of the Kafka feed's progress (projections/kafka_feed.py), kept once per feed: a batch
# moves the same keys of every read model it feeds, and a row per read model made a watermark
# round (18 partitions) upsert ~220 rows instead of ~55.
FEED_KEYS = ("offset:", "watermark:", "cached:")
FEED = "feed:"  # the projection column of a feed's rows: FEED + its read models' names
# Statements that come after a bulk load: maintaining an index row by row costs more than
# building it once over the loaded table.
_DEFERRABLE = ("CREATE INDEX", "CREATE UNIQUE INDEX", "CREATE TRIGGER")

# Applies the log after the rebuilt tables' position up to (at least) a position, in the
# given transaction.
CatchUp = Callable[[Any, int], None]

# Errors of the database's availability, not of an event: the batch is retried, nothing is
# quarantined for them.
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, sqlite3.OperationalError)
SET_ASIDE = "set aside: an earlier event of its stream is quarantined"

# The tables of the release before read models had progress of their own; dropped when met
# (read models are rebuilt, not migrated).
_SHARED_LAYOUT = ("users", "products", "products_fts", "orders", "sales", "stream_versions")


class ReadModels:
    def __init__(
        self,
        database: Database,
        prefix: str = "rm_",
        names: Iterable[str] | None = None,
        fill: Fill | None = None,
    ) -> None:
        self.db = database
        self.prefix = prefix
        # Closes a gap in a stream's versions from the event store (see ReadModel.apply_in).
        self.fill = fill
        wanted = list(READ_MODELS) if names is None else list(dict.fromkeys(names))
        if unknown := [name for name in wanted if name not in READ_MODELS]:
            raise ValueError(f"no read model named {', '.join(unknown)}")
        self.models: dict[str, ReadModel] = {
            name: READ_MODELS[name].model(database, prefix) for name in wanted
        }
        self.feed = feed_name(wanted)  # the row of the feed progress these read models share

    @classmethod
    def open(
        cls,
        *,
        sqlite_path: Path | str | None = None,
        postgres_url: str | None = None,
        prefix: str = "rm_",
        long_running: bool = False,
    ) -> ReadModels:
        """`long_running`: for a projector's loop, its connections checked only when not used
        for a second (eventstore/pools.py `check_unless_recent`)."""
        if postgres_url is not None:
            if long_running:
                database = PostgresDatabase(
                    postgres_url, check=check_unless_recent, reset=note_given_back
                )
            else:
                database = PostgresDatabase(postgres_url, check=check_and_sweep)
            return cls(database, prefix)
        assert sqlite_path is not None, "give sqlite_path or postgres_url"
        return cls(SqliteDatabase(sqlite_path), prefix)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def read_sealed(self) -> frozenset[str]:
        """The event types some read model applies reading their personal fields (all those
        it applies but does not list in `leaves_sealed`): the only ones worth opening."""
        return frozenset(
            event_type
            for model in self.models.values()
            for event_type in model.appliers
            if event_type not in model.leaves_sealed
        )

    def __getitem__(self, name: str) -> ReadModel:
        return self.models[name]

    def table(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def close(self) -> None:
        self.db.close()

    # --- tables ----------------------------------------------------------------------------

    def migrate(self, tag: str | None = None, *, defer_indexes: bool = False) -> None:
        """Creates, in one transaction, the progress table and each read model's tables that
        do not exist. `tag` names their indexes and triggers (default: the prefix). With
        `defer_indexes`, the tables created now get no secondary index nor trigger until
        `build_deferred` (a bulk load comes first)."""
        self._drop_shared_layout()
        with self.db.transaction() as cursor:
            if not self.db.table_exists(cursor, self.table("progress")):
                cursor.execute(
                    f"CREATE TABLE {self.table('progress')} (projection text NOT NULL,"
                    " key text NOT NULL, value bigint NOT NULL, PRIMARY KEY (projection, key))"
                )
            if not self.db.table_exists(cursor, self.table("quarantine")):
                cursor.execute(
                    f"CREATE TABLE {self.table('quarantine')} (projection text NOT NULL,"
                    " stream_id text NOT NULL, stream_version bigint NOT NULL,"
                    " position bigint NOT NULL, event_type text NOT NULL, error text NOT NULL,"
                    " event text NOT NULL, quarantined_at text NOT NULL,"
                    " PRIMARY KEY (projection, stream_id, stream_version))"
                )
            for model in self.models.values():
                if not model.exists(cursor):
                    for statement in model.schema(tag or self.prefix):
                        if not (defer_indexes and statement.startswith(_DEFERRABLE)):
                            cursor.execute(statement)
                    if defer_indexes:
                        cursor.execute(
                            f"INSERT INTO {self.table('progress')} (projection, key, value)"
                            " VALUES (%s, %s, 1)",
                            (model.name, INDEXES_PENDING),
                        )

    def build_deferred(self, tag: str) -> None:
        """Builds the indexes and triggers `migrate(defer_indexes=True)` left out (named
        after `tag`), and what those triggers would have kept, in one transaction."""
        pending = [n for n, p in self.progress_by_name().items() if p.get(INDEXES_PENDING)]
        if not pending:
            return
        with self.db.transaction() as cursor:
            for name in pending:
                model = self.models[name]
                for statement in model.schema(tag):
                    if statement.startswith(_DEFERRABLE):
                        cursor.execute(statement)
                model.after_bulk_load(cursor)
            self._delete_progress(cursor, pending, [INDEXES_PENDING])

    def drop(self) -> None:
        """Drops these read models' tables and progress (all of them: the progress table)."""
        with self.db.transaction() as cursor:
            self._drop_tables(cursor)
            progress = self.table("progress")
            quarantine = self.table("quarantine")
            if set(self.models) == set(READ_MODELS):
                cursor.execute(f"DROP TABLE IF EXISTS {progress}")
                cursor.execute(f"DROP TABLE IF EXISTS {quarantine}")
            elif self.db.table_exists(cursor, progress):
                self._delete_progress(cursor, self.names)
                if self.db.table_exists(cursor, quarantine):
                    where, params = self.db.in_list("projection", self.names)
                    cursor.execute(f"DELETE FROM {quarantine} WHERE {where}", params)

    def tidy(self) -> None:
        """After a bulk catch-up: these read models' tables tidied (`Database.tidy`)."""
        self.db.tidy([self.table(name) for m in self.models.values() for name in m.tables()])

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
        in one transaction; the rows changed, for the cache. After a batch with an erasure, no
        older copy of the erased rows stays in the database's files (`forget_overwritten`)."""
        try:
            # Pipelined (PostgreSQL): three round trips for a batch of one stream type, where
            # a round trip per statement took ten. No event is expected to fail here: when
            # one does, the batch is applied again on the plain path, which finds and sets
            # it aside (a pipeline raises errors late, not at the failed statement).
            with self.db.transaction(pipelined=True) as cursor:
                changes = self.apply_in(cursor, events, progress, quarantine=False)
        except TRANSIENT:
            raise
        except Exception as error:
            log.warning("a batch failed (%r): applied again, event by event if need be", error)
            with self.db.transaction() as cursor:
                changes = self.apply_in(cursor, events, progress)
        if any(event["event_type"] == ERASING_EVENT for event in events):
            self.db.forget_overwritten()
        return changes

    def apply_in(
        self,
        cursor: Any,
        events: Sequence[Mapping[str, Any]],
        progress: Mapping[str, int],
        *,
        quarantine: bool = True,
    ) -> list[Change]:
        """`apply` within the caller's transaction; `quarantine=False`: an event that fails
        fails the batch instead of being set aside."""
        names = self.names
        self._lock_progress(cursor, names, [*progress, GENERATION])
        current, held = self._progress_and_held_in(cursor, names)
        changes: list[Change] = []
        for name, model in self.models.items():
            mine = [e for e in events if e["stream_type"] == model.stream_type]
            generation = current[name].get(GENERATION, 0)
            changes += self._apply_or_quarantine(
                cursor, model, mine, generation, held[name], bisect=quarantine
            )
        self.record_progress(cursor, progress)
        return changes

    def record_progress(self, cursor: Any, progress: Mapping[str, int]) -> None:
        """`progress` in the caller's transaction (each read model's own keys for each, the
        feed's once); never backwards, even from a late batch of a former partition owner."""
        if progress:
            table = self.table("progress")
            self.db.insert_rows(
                cursor,
                table,
                ("projection", "key", "value"),
                self._progress_rows(progress.items()),
                "ON CONFLICT (projection, key) DO UPDATE"
                f" SET value = {self.db.greatest}({table}.value, excluded.value)",
            )

    def _progress_rows(self, progress: Iterable[tuple[str, int]]) -> list[tuple[str, str, int]]:
        """The rows `progress` is kept in: a read model's own keys in a row per read model,
        the feed's keys in the feed's row."""
        rows = []
        for key, value in progress:
            if is_feed_key(key):
                rows.append((self.feed, key, value))
            else:
                rows += [(name, key, value) for name in self.names]
        return rows

    def _apply_or_quarantine(
        self,
        cursor: Any,
        model: ReadModel,
        events: list[Envelope],
        generation: int,
        held: set[str],
        *,
        bisect: bool = True,
    ) -> list[Change]:
        """Applies `events` to `model`; when that fails (not for the database's availability),
        splits them in halves until the failing event is found, and sets it aside in the
        quarantine with its error, with every later event of its stream: the rest is applied
        (each try under a savepoint of the caller's transaction). `bisect=False`: the
        failure is raised. Events of a stream already held are set aside either way."""
        for event in events:
            if event["stream_id"] in held:
                self._quarantine(cursor, model.name, event, SET_ASIDE)
        events = [e for e in events if e["stream_id"] not in held]
        if not events:
            return []
        if not bisect:
            return model.apply_in(cursor, events, generation, self.fill)
        cursor.execute("SAVEPOINT apply_events")
        try:
            changes = model.apply_in(cursor, events, generation, self.fill)
        except TRANSIENT:
            raise
        except Exception as error:
            cursor.execute("ROLLBACK TO SAVEPOINT apply_events")
            cursor.execute("RELEASE SAVEPOINT apply_events")
            if len(events) > 1:
                half = len(events) // 2
                return self._apply_or_quarantine(
                    cursor, model, events[:half], generation, held
                ) + self._apply_or_quarantine(cursor, model, events[half:], generation, held)
            [poison] = events
            log.error(
                "%s: event %s (version %s of %s) quarantined: %r",
                model.name,
                poison["position"],
                poison["stream_version"],
                poison["stream_id"],
                error,
            )
            self._quarantine(cursor, model.name, poison, f"{type(error).__name__}: {error}")
            held.add(poison["stream_id"])
            return []
        cursor.execute("RELEASE SAVEPOINT apply_events")
        return changes

    def _quarantine(self, cursor: Any, name: str, event: Envelope, error: str) -> None:
        self.db.insert_rows(
            cursor,
            self.table("quarantine"),
            (
                "projection",
                "stream_id",
                "stream_version",
                "position",
                "event_type",
                "error",
                "event",
                "quarantined_at",
            ),
            [
                (
                    name,
                    event["stream_id"],
                    event["stream_version"],
                    event["position"],
                    event["event_type"],
                    error,
                    # Without its data: the event may hold personal data, opened, which an
                    # erasure would not reach here; a retry reads it from the store anyway.
                    orjson.dumps(
                        {k: v for k, v in event.items() if k != "data"}, default=str
                    ).decode(),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                )
            ],
            "ON CONFLICT (projection, stream_id, stream_version) DO NOTHING",
        )
        QUARANTINED.labels(name).inc()

    def _progress_and_held_in(
        self, cursor: Any, names: list[str]
    ) -> tuple[dict[str, dict[str, int]], dict[str, set[str]]]:
        """Each read model's progress, and the streams it holds in the quarantine: one query
        (one round trip in a pipelined transaction)."""
        cursor.execute(
            f"SELECT projection, key, value, NULL AS stream_id FROM {self.table('progress')}"
            " UNION ALL SELECT DISTINCT projection, CAST(NULL AS TEXT), CAST(NULL AS INTEGER),"
            " stream_id"
            f" FROM {self.table('quarantine')}"
        )
        found: dict[str, dict[str, int]] = {name: {} for name in names}
        held: dict[str, set[str]] = {name: set() for name in names}
        for row in cursor.fetchall():
            if row["projection"] not in found:
                continue
            if row["stream_id"] is not None:
                held[row["projection"]].add(row["stream_id"])
            else:
                found[row["projection"]][row["key"]] = row["value"]
        return found, held

    # --- Kafka messages refused by the trusted feed (projections/feed_refusals.py) ----------

    def record_refused(self, refused: Sequence[RefusedMessage], keep: int) -> None:
        feed_refusals.record(self.db, self.table("feed_refused"), refused, keep)

    def refused(self) -> list[dict[str, Any]]:
        return feed_refusals.listed(self.db, self.table("feed_refused"))

    # --- the quarantine --------------------------------------------------------------------

    def quarantine(self) -> list[dict[str, Any]]:
        """Every quarantined event of these read models (the first of each stream carries the
        error; the later ones were set aside behind it), by projection, stream and version."""
        with self.db.reading() as cursor:
            cursor.execute(
                "SELECT projection, stream_id, stream_version, position, event_type, error,"
                f" quarantined_at FROM {self.table('quarantine')}"
                " ORDER BY projection, stream_id, stream_version"
            )
            rows = [r for r in cursor.fetchall() if r["projection"] in self.models]
        for name in self.names:
            QUARANTINE_SIZE.labels(name).set(sum(r["projection"] == name for r in rows))
        return [dict(r) for r in rows]

    def quarantined_streams(self) -> dict[str, dict[str, dict[str, Any]]]:
        """By read model, each quarantined stream's first quarantined event (for queries)."""
        found: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.names}
        for row in self.quarantine():
            found[row["projection"]].setdefault(row["stream_id"], row)
        return found

    def retry(
        self, name: str | None = None, stream_id: str | None = None
    ) -> tuple[dict[str, int], list[Change]]:
        """Takes quarantined streams (of the read model `name`, or all; one `stream_id`, or
        all) out of the quarantine and applies their events again — from the event store
        when the read models have one (`fill`), else the events as quarantined. An event
        that still fails is quarantined again. Returns how many events each one applied, and
        the rows changed (for the cache to forget)."""
        applied: dict[str, int] = {}
        changes: list[Change] = []
        with self.db.transaction() as cursor:
            names = [name] if name is not None else self.names
            self._lock_progress(cursor, self.names, [GENERATION])
            current = self._progress_in(cursor, self.names)
            table = self.table("quarantine")
            cursor.execute(
                f"SELECT projection, stream_id, event FROM {table}"
                " ORDER BY projection, stream_id, stream_version"
            )
            rows = [
                r
                for r in cursor.fetchall()
                if r["projection"] in names and stream_id in (None, r["stream_id"])
            ]
            by_stream: dict[tuple[str, str], list[Envelope]] = {}
            for row in rows:
                key = (row["projection"], row["stream_id"])
                by_stream.setdefault(key, []).append(orjson.loads(row["event"]))
            for (projection, stream), quarantined in by_stream.items():
                cursor.execute(
                    f"DELETE FROM {table} WHERE projection = %s AND stream_id = %s",
                    (projection, stream),
                )
                model = self.models[projection]
                events: Sequence[Envelope] = quarantined
                if self.fill is not None:
                    at = model.stream_version(cursor, stream)
                    events = self.fill(stream, at, 2**62)
                held: set[str] = set()
                changes += self._apply_or_quarantine(
                    cursor,
                    model,
                    list(events),
                    current[projection].get(GENERATION, 0),
                    held,
                )
                applied[projection] = applied.get(projection, 0) + (0 if held else len(events))
        self.quarantine()  # the size metric
        return applied, changes

    def _lock_progress(self, cursor: Any, names: list[str], keys: list[str]) -> None:
        """Serialises batches of the same feed: a projector that lost its Kafka partitions in a
        rebalance and still commits waits here, then sees the new owner's rows."""
        if self.db.kind != "postgres":
            return  # SQLite's BEGIN IMMEDIATE already runs one writer at a time
        table = self.table("progress")
        keys = list(dict.fromkeys(keys))
        own = [key for key in keys if not is_feed_key(key)]
        shared = [key for key in keys if is_feed_key(key)]
        self.db.insert_rows(
            cursor,
            table,
            ("projection", "key", "value"),
            [(name, key, 0) for name in names for key in own]
            + [(self.feed, key, 0) for key in shared],
            "ON CONFLICT (projection, key) DO NOTHING",
        )
        cursor.execute(
            f"SELECT 1 FROM {table} WHERE (projection = ANY(%s) AND key = ANY(%s))"
            " OR (projection = %s AND key = ANY(%s)) FOR UPDATE",
            (names, own, self.feed, shared),
        )

    # --- progress --------------------------------------------------------------------------

    def _progress_in(
        self, cursor: Any, names: list[str], *, feeds: bool = True
    ) -> dict[str, dict[str, int]]:
        """Each read model's progress: its own rows and (`feeds`) those of every feed naming
        it."""
        cursor.execute(f"SELECT projection, key, value FROM {self.table('progress')}")
        found: dict[str, dict[str, int]] = {name: {} for name in names}
        shared = []
        for row in cursor.fetchall():
            if row["projection"] in found:
                found[row["projection"]][row["key"]] = row["value"]
            elif feeds and row["projection"].startswith(FEED):
                shared.append(row)
        for row in shared:
            for name in fed_by(row["projection"]) & found.keys():
                merge_feed_key(found[name], row["key"], row["value"])
        return found

    def _delete_progress(
        self, cursor: Any, names: list[str], keys: Sequence[str] | None = None
    ) -> None:
        """Deletes the progress of `names` (only `keys` of it, when given)."""
        where, params = self.db.in_list("projection", names)
        if keys is not None:
            key_where, key_params = self.db.in_list("key", list(keys))
            where, params = f"{where} AND {key_where}", [*params, *key_params]
        cursor.execute(f"DELETE FROM {self.table('progress')} WHERE {where}", params)

    def progress_by_name(self) -> dict[str, dict[str, int]]:
        """Each read model's progress keys."""
        with self.db.reading() as cursor:
            return self._progress_in(cursor, self.names)

    def progress(self, name: str) -> dict[str, int]:
        return self.progress_by_name()[name]

    def seed_progress(self, keys: Sequence[str]) -> None:
        """Adds `keys` at 0 where missing (a Kafka partition not heard from yet counts in the
        position). The feed's keys a release before kept per read model are taken over by
        the feed's row first (the least of them: a conservative position, offsets read again
        at worst) and deleted."""
        table = self.table("progress")
        with self.db.transaction() as cursor:
            where, params = self.db.in_list("projection", self.names)
            cursor.execute(f"SELECT key, value FROM {table} WHERE {where}", params)
            kept: dict[str, int] = {}
            for row in cursor.fetchall():
                if is_feed_key(row["key"]):
                    kept[row["key"]] = min(row["value"], kept.get(row["key"], row["value"]))
            if kept:
                self.db.insert_rows(
                    cursor,
                    table,
                    ("projection", "key", "value"),
                    [(self.feed, key, value) for key, value in kept.items()],
                    "ON CONFLICT (projection, key) DO NOTHING",
                )
                self._delete_progress(cursor, self.names, list(kept))
            self.db.insert_rows(
                cursor,
                table,
                ("projection", "key", "value"),
                self._progress_rows((key, 0) for key in keys),
                "ON CONFLICT (projection, key) DO NOTHING",
            )

    def forget_feeds_except(self, topics: Sequence[str]) -> list[str]:
        """Deletes the Kafka progress (`offset:`/`watermark:` keys) of topics not in `topics`:
        a feed no longer read (after a change of topic prefix) must not hold the position
        back. Returns the keys deleted."""
        kept = set(topics)
        with self.db.transaction() as cursor:
            cursor.execute(f"SELECT DISTINCT key FROM {self.table('progress')}")
            stale = [
                row["key"]
                for row in cursor.fetchall()
                if row["key"].startswith(("offset:", "watermark:", "cached:"))
                and row["key"].split(":", 1)[1].rsplit(":", 1)[0] not in kept
            ]
            if stale:
                where, params = self.db.in_list("key", stale)
                cursor.execute(f"DELETE FROM {self.table('progress')} WHERE {where}", params)
        if stale:
            log.warning("progress of topics no longer read dropped: %s", ", ".join(stale))
        return stale

    def position(self, name: str | None = None) -> int:
        """Every event at or below this position is applied (to `name`, or to all):
        `position_of` each read model's progress, folded by the database into a row per read
        model and feed (pollers ask often: P2's watcher a thousand times a second, and reading
        every progress row cost 0.2 ms of CPU a call). A read model fed by several feeds (a
        consumer group of processes with different read models, while they are restarted
        one by one) counts the furthest of their positions: at worst below `position_of`."""
        names = self.names if name is None else [name]
        where, params = self.db.in_list("projection", names)
        with self.db.reading() as cursor:
            cursor.execute(
                f"SELECT projection, max(CASE WHEN key = %s THEN value END) AS log,"
                " min(CASE WHEN key LIKE %s THEN value END) AS mark"
                f" FROM {self.table('progress')} WHERE {where} OR projection LIKE %s"
                " GROUP BY projection",
                [LOG, "watermark:%", *params, f"{FEED}%"],
            )
            found = {name: 0 for name in names}
            for row in cursor.fetchall():
                reached = max(row["log"] or 0, row["mark"] or 0)
                projection = row["projection"]
                for fed in fed_by(projection) if projection.startswith(FEED) else {projection}:
                    if fed in found:
                        found[fed] = max(found[fed], reached)
        return min(found.values(), default=0)

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
            own = self._progress_in(cursor, names, feeds=False)
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
            # The rebuild's quarantine (what it could not apply) becomes the live one.
            where, params = self.db.in_list("projection", names)
            cursor.execute(f"DELETE FROM {self.table('quarantine')} WHERE {where}", params)
            cursor.execute(
                f"INSERT INTO {self.table('quarantine')} SELECT * FROM"
                f" {rebuilt.table('quarantine')} WHERE {where}",
                params,
            )
            cursor.execute(f"DELETE FROM {rebuilt.table('quarantine')} WHERE {where}", params)
            for name in names:
                # The feeds' rows stay: the read model is in them by name.
                taken_over = {k: v for k, v in own[name].items() if k != GENERATION}
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


def cache_position_of(progress: Mapping[str, int]) -> int:
    """Up to which position the cache is known to hold no row older than the read model's:
    the Kafka feed records after each batch (`cached:` keys) the watermarks whose tombstones
    the cache accepted; without such keys (the log feed writes its tombstones before it
    moves its position), the position itself."""
    cached = [v for k, v in progress.items() if k.startswith("cached:")]
    return min(cached) if cached else position_of(progress)


def position_of(progress: Mapping[str, int]) -> int:
    """The furthest position every event up to which is applied: the log feed's own, or the
    smallest Kafka partition watermark, whichever is further (after a rebuild was swapped
    in, a distributed read model has both)."""
    watermarks = [v for k, v in progress.items() if k.startswith("watermark:")]
    return max(progress.get(LOG, 0), min(watermarks, default=0))


def is_feed_key(key: str) -> bool:
    return key.startswith(FEED_KEYS)


def feed_name(names: Iterable[str]) -> str:
    """The projection column of the progress of a feed of these read models."""
    return FEED + "+".join(sorted(names))


def fed_by(feed: str) -> set[str]:
    """The read models a feed's progress row is for."""
    return set(feed.removeprefix(FEED).split("+"))


def merge_feed_key(progress: dict[str, int], key: str, value: int) -> None:
    """A feed's progress key into a read model's, which another feed (or a row of a
    release before) may have too: the further watermark (every event up to each one is
    applied), the nearer offset (a partition is read again from there at worst)."""
    if key not in progress:
        progress[key] = value
    elif key.startswith("offset:"):
        progress[key] = min(progress[key], value)
    else:
        progress[key] = max(progress[key], value)
