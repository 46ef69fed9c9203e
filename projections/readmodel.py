"""What every read model is made of: a projection with one apply method per event type
(Marten's `Apply`), the tables it owns, its progress and its cache namespace, and the query
side's by-id read through the cache.

A read model follows the streams of one type (`stream_type`) and keeps one row per stream in
its main table. A batch is applied in the caller's transaction: the rows the batch touches are
loaded, each event whose stream version is above the row's is folded in by its apply method,
and the changed rows written back. A redelivered event (Kafka after a crash, a relay re-send)
is at or below the row's version and changes nothing. An event of the stream type with no
apply method still moves the row's version on, so `version` is always the stream's.

Tables are named `<prefix><name>`: a rebuild fills tables of another prefix beside the live
ones and swaps them in (`projections/readmodels.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson
from starlette.concurrency import run_in_threadpool

from eventkeep.metrics import CACHE_LOOKUPS, GAPS
from eventkeep.projections.cursors import decode_cursor, encode_cursor
from eventkeep.projections.database import Database

if TYPE_CHECKING:
    from eventkeep.projections.cache import Cache


log = logging.getLogger(__name__)

Row = dict[str, Any]
Envelope = Mapping[str, Any]
Apply = Callable[[Any, "Row | None", Envelope], "Row | None"]
# The events of a stream from the event store (the source of truth), upcast, with a version
# above `after` and below `before`: (stream_id, after, before) -> envelopes in version order.
Fill = Callable[[str, int, int], Sequence[Envelope]]


# The request's X-Min-Position (api/reads.py sets it): by-id reads answer no row older.
MIN_POSITION: ContextVar[int] = ContextVar("min_position", default=0)


class StreamQuarantined(Exception):
    """A query for a stream whose events are quarantined: its row is not current."""

    def __init__(self, projection: str, stream_id: str, entry: Mapping[str, Any]) -> None:
        super().__init__(f"{projection}: stream {stream_id} is quarantined")
        self.projection = projection
        self.stream_id = stream_id
        self.details = {
            "projection": projection,
            "stream_id": stream_id,
            "stream_version": entry.get("stream_version"),
            "position": entry.get("position"),
            "event_type": entry.get("event_type"),
            "error": entry.get("error"),
        }


class StreamGap(Exception):
    """A stream's next event is missing and the store could not give it: nothing is applied
    over the gap (the batch is retried)."""


@dataclass(frozen=True)
class Change:
    """A read-model row a batch changed, for the cache after the commit: in the read model's
    cache namespace (`kind`) and the generation of the tables it was written to (each
    swapped-in rebuild is a new one), with the by-id answer of the row as committed
    (`ReadModel.answer`), or None where the cache is only to forget the row (a tombstone)."""

    kind: str
    id: str
    version: int
    generation: int = 0
    answer: bytes | None = None


def applies(event_type: str) -> Callable[[Apply], Apply]:
    """Marks a read model's method as the one that applies `event_type`."""

    def mark(method: Apply) -> Apply:
        method.applies_to = event_type  # type: ignore[attr-defined]  # read by __init_subclass__
        return method

    return mark


@dataclass
class Batch:
    """The rows one batch reads and writes, by stream id, and which of them changed."""

    rows: dict[str, Row] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    extra: dict[Any, Any] = field(default_factory=dict)  # a read model's own effects
    seen: dict[str, int] = field(default_factory=dict)  # versions handled of row-less streams


class ReadModel:
    """One read model. Subclasses say `name`, `stream_type`, their main table's `columns` and
    `schema()`, and define `@applies("EventType")` methods `(row, event) -> row`: `row` is
    the stream's current row (None before the first event) and the answer its new one (None:
    nothing shown changes)."""

    name: ClassVar[str]  # the registry's and the command line's name of it
    stream_type: ClassVar[str]  # "User", "Product", "Order"
    columns: ClassVar[tuple[str, ...]]  # of its main table, a row per stream
    row_table: ClassVar[str | None] = None  # that table's name, when it is not `name`
    json_columns: ClassVar[frozenset[str]] = frozenset()  # stored as JSON text
    cache_kind: ClassVar[str | None] = None  # cache namespace of by-id reads; None: not cached
    # Event types it applies without reading their personal fields (docs/events.md): the Kafka
    # projector leaves those sealed when no other read model reads them, and asks no data key.
    leaves_sealed: ClassVar[frozenset[str]] = frozenset()
    appliers: ClassVar[dict[str, Apply]]
    _json_at: ClassVar[tuple[tuple[int, str], ...]]  # the JSON columns, by place in `columns`

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.appliers = {
            method.applies_to: method
            for klass in reversed(cls.__mro__)
            for method in vars(klass).values()
            if hasattr(method, "applies_to")
        }
        cls._json_at = tuple(
            (at, column)
            for at, column in enumerate(getattr(cls, "columns", ()))
            if column in cls.json_columns
        )

    def __init__(self, database: Database, prefix: str) -> None:
        self.db = database
        self.prefix = prefix

    def table(self, name: str | None = None) -> str:
        """A table of this read model with its prefix; by default its main table."""
        return f"{self.prefix}{name or self.row_table or self.name}"

    # --- tables ----------------------------------------------------------------------------

    def schema(self, tag: str) -> list[str]:
        """CREATE statements of its tables (`self.table(…)`), indexes and triggers named after
        `tag`: index and trigger names outlive the renames of a swap, so each build of the
        tables gets its own tag."""
        raise NotImplementedError

    def tables(self) -> tuple[str, ...]:
        """The names (without prefix) of every table it owns: renamed together in a swap."""
        return (self.row_table or self.name,)

    def exists(self, cursor: Any) -> bool:
        return self.db.table_exists(cursor, self.table())

    def dump(self, cursor: Any) -> dict[str, list[Row]]:
        """Every row of its tables, in key order: to compare two builds."""
        cursor.execute(f"SELECT * FROM {self.table()} ORDER BY id")
        return {self.row_table or self.name: [self.decoded(row) for row in cursor.fetchall()]}

    # --- applying --------------------------------------------------------------------------

    def apply_in(
        self,
        cursor: Any,
        events: Sequence[Envelope],
        generation: int,
        fill: Fill | None = None,
    ) -> list[Change]:
        """Applies the events of its stream type, in the caller's transaction; the changed
        rows, for the cache (in the namespace and `generation` of its tables).

        Per-stream continuity: event N+1 of a stream is applied only after N. An event at or
        below the row's version is a redelivery (skipped); one above the next version is
        after a gap, which `fill` closes from the event store first (counted in
        `eventkeep_projection_gaps`); without it, or when the store cannot close it, the
        batch fails (StreamGap) rather than skip an event."""
        mine = [e for e in events if e["stream_type"] == self.stream_type]
        if not mine:
            return []
        batch = Batch(rows=self._load(cursor, sorted({e["stream_id"] for e in mine})))
        for event in mine:
            self.fold_in(batch, event, fill)
        self.write(cursor, batch)
        if self.cache_kind is None:
            return []
        # The answers the cache gets once the caller committed: the next read is a hit.
        rows = batch.rows
        return [
            Change(self.cache_kind, i, v, generation, self.answer(rows[i]))
            for i, v in batch.changed.items()
        ]

    def fold_in(self, batch: Batch, event: Envelope, fill: Fill | None = None) -> None:
        """Folds one event of its stream type into `batch`'s rows, keeping per-stream
        continuity (see `apply_in`); raises StreamGap for a gap `fill` cannot close. The
        event-by-event path and the bulk path (`projections/bulk.py`) both fold with it."""
        stream_id, version = event["stream_id"], event["stream_version"]
        current = batch.rows.get(stream_id)
        applied = current["version"] if current is not None else batch.seen.get(stream_id, 0)
        if version <= applied:
            return  # already applied: a redelivery
        if version > applied + 1:
            missing = fill(stream_id, applied, version) if fill is not None else []
            if [e["stream_version"] for e in missing] != list(range(applied + 1, version)):
                raise StreamGap(
                    f"{self.name}: {stream_id} is at version {applied}, next given"
                    f" {version}, and the store does not hold the versions between"
                )
            GAPS.labels(self.name).inc()
            log.warning(
                "%s: versions %d-%d of %s filled from the event store",
                self.name,
                applied + 1,
                version - 1,
                stream_id,
            )
            for earlier in missing:
                self._fold(batch, earlier)
        self._fold(batch, event)
        batch.seen[stream_id] = version

    def _fold(self, batch: Batch, event: Envelope) -> None:
        """Folds `event` into its stream's row. Once per event and read model on both paths:
        no dict is made here but the new row."""
        stream_id, version = event["stream_id"], event["stream_version"]
        current = batch.rows.get(stream_id)
        updated = self.apply_event(batch, current, event)
        if updated is not None:  # a row of its own (the apply method's answer)
            updated["id"] = stream_id
            updated["version"] = version
            updated["updated_at"] = event["recorded_at"]
        elif current is not None:
            updated = current | {"version": version}  # nothing shown changed
        else:
            return
        batch.rows[stream_id] = updated
        batch.changed[stream_id] = version

    def apply_event(self, batch: Batch, row: Row | None, event: Envelope) -> Row | None:
        """Calls the event's apply method (a read model with effects beyond its rows, like
        daily sales, extends this)."""
        method = self.appliers.get(event["event_type"])
        return None if method is None else method(self, row, event)

    def stream_version(self, cursor: Any, stream_id: str) -> int:
        """The version of `stream_id` this read model holds (0: none)."""
        cursor.execute(f"SELECT version FROM {self.table()} WHERE id = %s", (stream_id,))
        row = cursor.fetchone()
        return 0 if row is None else int(row["version"])

    def _load(self, cursor: Any, stream_ids: list[str]) -> dict[str, Row]:
        where, params = self.db.in_list("id", stream_ids)
        cursor.execute(f"SELECT * FROM {self.table()} WHERE {where}", params)
        return {row["id"]: self.decoded(row) for row in cursor.fetchall()}

    def write(self, cursor: Any, batch: Batch) -> None:
        """Writes the changed rows back (one statement), then the batch's other effects."""
        changed = [batch.rows[row_id] for row_id in batch.changed]
        if changed:
            self.db.insert_rows(
                cursor,
                self.table(),
                self.columns,
                [self.encoded(row) for row in changed],
                on_conflict_replace(self.columns, ("id",)),
            )
        self.write_effects(cursor, batch)

    def write_effects(self, cursor: Any, batch: Batch) -> None:
        """Writes what a batch did beyond its rows (`batch.extra`); none by default."""

    def after_bulk_load(self, cursor: Any) -> None:
        """After rows were loaded in bulk into tables whose indexes and triggers came after
        (`projections/bulk.py`): whatever those triggers would have kept (none by default)."""

    def encoded(self, row: Row) -> tuple[Any, ...]:
        """The row's values in `columns` order (None where it has none), JSON columns as
        text; once per row a load writes, so the columns are taken by `map` in C and only
        the JSON ones are visited in Python."""
        values = tuple(map(row.get, self.columns))
        if not self._json_at:
            return values
        patched = list(values)
        for at, column in self._json_at:
            patched[at] = orjson.dumps(row[column]).decode()
        return tuple(patched)

    def decoded(self, row: Row) -> Row:
        for column in self.json_columns:
            if isinstance(row.get(column), str):
                row[column] = orjson.loads(row[column])
        row.pop("search", None)
        return row

    # --- reading ---------------------------------------------------------------------------

    @property
    def shown_columns(self) -> str:
        """The SELECT list of a read: the row's columns (not derived ones such as the products'
        search vector, which is not shown and costs its transfer and parsing on every row)."""
        return ", ".join(self.columns)

    def get(self, row_id: str) -> Row | None:
        row = self._read(row_id)
        return None if row is None else shown(row)

    def read_answer(self, row_id: str) -> tuple[int, bytes] | None:
        """The stored row's version and by-id answer (`answer`); None: no row."""
        row = self._read(row_id)
        return None if row is None else (row["version"], self.answer(row))

    def _read(self, row_id: str) -> Row | None:
        with self.db.reading() as cursor:
            cursor.execute(
                f"SELECT {self.shown_columns} FROM {self.table()} WHERE id = %s", (row_id,)
            )
            row = cursor.fetchone()
        return None if row is None else self.decoded(row)

    def answer(self, row: Row) -> bytes:
        """The by-id answer of a stored row (decoded): its `columns` in their order, shown and
        encoded. The one encoder of both writers of the cache, the projector after its commit
        (from the row it wrote) and a query that missed (from the row it read), so both write
        the same bytes for the same version."""
        return encode(shown(dict(zip(self.columns, map(row.get, self.columns), strict=True))))

    def page(
        self,
        where: list[str],
        params: list[Any],
        column: str,
        direction: str,
        cursor: str | None,
        limit: int,
        table: str | None = None,
    ) -> tuple[list[Row], str | None]:
        """Keyset pagination on (column, id): stable under concurrent writes, no OFFSET."""
        statement, values = self.page_statement(
            where, params, column, direction, cursor, limit, table
        )
        with self.db.reading() as db:
            db.execute(statement, values)
            rows = db.fetchall()
        return self.paged(rows, column, limit)

    def paged(self, rows: list[Row], column: str, limit: int) -> tuple[list[Row], str | None]:
        """A page's rows as shown (of `limit` + 1 read in order on (column, id)), and the next
        page's cursor when the extra row says there is one."""
        more = len(rows) > limit
        rows = [self.decoded(row) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[-1][column], rows[-1]["id"]) if more else None
        return [shown(row) for row in rows], next_cursor

    def page_statement(
        self,
        where: list[str],
        params: list[Any],
        column: str,
        direction: str,
        cursor: str | None,
        limit: int,
        table: str | None = None,
    ) -> tuple[str, list[Any]]:
        """The SELECT of a page (one row more than `limit`: whether there is a next page)."""
        where, params = list(where), list(params)
        if cursor is not None:
            after = decode_cursor(cursor, column)
            where.append(f"({column}, id) {'>' if direction == 'asc' else '<'} (%s, %s)")
            params.extend(after)
        order = f"{column} {direction}, id {direction}"
        statement = (
            f"SELECT {self.shown_columns} FROM {table or self.table()}"
            f" WHERE {' AND '.join(where)}"
            f" ORDER BY {order} LIMIT %s"
        )
        return statement, [*params, limit + 1]


class Progress(Protocol):
    """Where each read model is; answered from memory (it is asked on the event loop)."""

    def position_of(self, name: str) -> int: ...

    def generation_of(self, name: str) -> int: ...

    def cache_position_of(self, name: str) -> int:
        """Up to which position the cache holds no row older than the read model's."""
        ...

    def quarantined_of(self, name: str) -> Mapping[str, Mapping[str, Any]]:
        """The read model's quarantined streams: id -> first quarantined event and error."""
        ...

    def want(self) -> None:
        """A reader is about to wait for a position: keep it fresh meanwhile."""
        ...


class ReadModelQueries:
    """The query side of one read model: how far it is, and by-id reads through the cache.
    Each read model's module extends it with its own queries; they read its tables only.
    Without a `side` (the cache and progress of the API's `Queries`), only those queries
    work: by-id reads and positions need it."""

    def __init__(self, model: ReadModel, side: QuerySide | None = None) -> None:
        self.model = model
        self._given_side = side

    @property
    def _side(self) -> QuerySide:
        assert self._given_side is not None, "by-id reads and positions need the query side"
        return self._given_side

    @property
    def name(self) -> str:
        return self.model.name

    def position(self) -> int:
        return self._side.progress.position_of(self.model.name)

    async def get_async(self, row_id: str) -> Row | None:
        """By id, as a dict (`encoded_async` decoded), for callers that look inside."""
        body = await self.encoded_async(row_id)
        return None if body is None else orjson.loads(body)

    async def encoded_async(self, row_id: str) -> bytes | None:
        """By id, as the query API answers it (JSON bytes), cache first; a miss is read from
        the read model (in a thread), encoded once and offered to the cache. The generation
        is read first: a row read after a swap may be cached under the old one, never an old
        row under the new one."""
        held = self._side.progress.quarantined_of(self.model.name).get(row_id)
        if held is not None:
            raise StreamQuarantined(self.model.name, row_id, held)
        kind = self.model.cache_kind
        wanted = MIN_POSITION.get()
        if kind is None or (
            wanted and self._side.progress.cache_position_of(self.model.name) < wanted
        ):
            # Read-your-writes: the cache may still hold a row older than `wanted`'s (its
            # tombstones not known written), so this read goes to the read model.
            return await run_in_threadpool(self._read_encoded, row_id)
        generation = self._side.progress.generation_of(self.model.name)
        body = await self._side.cache.get_async(kind, row_id, generation)
        CACHE_LOOKUPS.labels("miss" if body is None else "hit").inc()
        if body is None:
            body = await run_in_threadpool(self.fill_from_read_model, kind, row_id, generation)
        return body

    def _read_encoded(self, row_id: str) -> bytes | None:
        read = self.model.read_answer(row_id)
        return None if read is None else read[1]

    def fill_from_read_model(self, kind: str, row_id: str, generation: int) -> bytes | None:
        """A miss: the row's answer read from the read model (blocking: call it in a thread)
        and offered to the cache under `generation` (read before the row); None: no row."""
        read = self.model.read_answer(row_id)
        if read is None:
            return None
        version, body = read
        self._side.cache.fill(kind, row_id, version, body, generation)
        return body


class QuerySide(Protocol):
    cache: Cache
    progress: Progress


# --- rows --------------------------------------------------------------------------------


def to_cents(amount: str) -> int:
    return int(Decimal(amount).scaleb(2))


def from_cents(cents: int) -> str:
    return str(Decimal(cents).scaleb(-2))


def shown(row: Row) -> Row:
    """A row as the query API answers it: money as decimal strings."""
    answer = {k: v for k, v in row.items() if k not in ("search", "updated_at")}
    for cents in ("price_cents", "total_cents"):
        if cents in answer:
            answer[cents.removesuffix("_cents")] = from_cents(answer.pop(cents))
    return answer


def encode(row: Row) -> bytes:
    """A row as a by-id query answers it (JSON): what the cache keeps and a hit sends."""
    return orjson.dumps(row)


def on_conflict_replace(columns: Sequence[str], key: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
