"""The bulk paths: a rebuild's, and a far-behind projector's catch-up.

A rebuild's: the log folded in memory, read model by read model, and the
rows written in big loads (PostgreSQL COPY in binary; SQLite one prepared INSERT over the rows)
into tables whose indexes and triggers are built after the load.

Each event is folded by the read model's own `fold_in` (the continuity, redelivery and apply
rules of the event-by-event path, `ReadModel.apply_in`), and an event that fails is set aside
in the quarantine with every later event of its stream, as that path does: both paths give
the same tables (tests/replay/test_bulk_rebuild.py).

Memory stays bounded: the folded rows are written when `rows_bound` rows of one read model or
`flush_events` events are held (the load's position recorded with them, so an interrupted
load resumes from its last flush), and once handed to the writer, the oldest rows are
dropped; a later event of a dropped stream reads its row back (from a load not committed yet
that holds it, else one statement per page for all such streams). The writes run in a writer
thread of their own, overlapping the fold of the next pages: the fold never waits for them.

A projector far behind (or a read model new to a running feed) catches up with `catch_up`
before it follows the live feed: the same read-ahead of upcast pages, each page a big batch
through the event-by-event path (`ReadModels.apply`: one read and one write per read model per
page, under the feed's progress lock). Its tables are live — read by queries, cached, written
by other projectors of the group — so it writes in place, not by COPY into new tables.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventkeep.heap import freeze_startup_heap, was_frozen
from eventkeep.projections.log_pages import EnvelopeLog, upcast_pages
from eventkeep.projections.readmodel import Batch, Change, Envelope, ReadModel, Row
from eventkeep.projections.readmodels import LOG, SET_ASIDE, ReadModels

log = logging.getLogger(__name__)

# Rows of one read model held in memory before they are written (an order's row with its
# lines is ~1.5 KB of Python objects: M1 allows a rebuild 500 MB), and events folded between
# two writes (the resume granularity).
ROWS_BOUND = 50_000
FLUSH_EVENTS = 100_000
# Events per catch-up batch (SQLite takes up to 32,766 ids in one IN list), and the lag from
# which a feed catches up before it follows.
CATCH_UP_BATCH = 20_000

Applied = Callable[[list[Change], int], None]  # (rows changed, position reached)


def catch_up(
    global_log: EnvelopeLog,
    models: ReadModels,
    after: int,
    applied: Applied,
    batch_size: int = CATCH_UP_BATCH,
    *,
    until: int | None = None,
    stream_types: Sequence[str] = (),
) -> int:
    """Applies the log after `after` (up to `until`; of `stream_types` only, when `models`
    follow no other) to `models` in batches of `batch_size` read ahead (progress key `log`;
    `until` recorded last); `applied` hears of each batch committed. The last position."""
    position = after
    pages = upcast_pages(
        global_log,
        after,
        batch_size,
        until=until,
        stream_types=stream_types,
        only=models.read_sealed(),
    )
    for page in pages:
        position = page[-1]["position"]
        applied(models.apply(page, {LOG: position}), position)
    if until is not None and until > position:
        position = until
        applied(models.apply([], {LOG: position}), position)
    return position


@dataclass
class _Fold:
    """One read model's folded rows: `stored` are those its tables already hold (written by
    an earlier flush, or read back), the others are new (loaded with COPY)."""

    model: ReadModel
    batch: Batch = field(default_factory=Batch)
    fresh: bool = True  # its tables held no row when the load began
    stored: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)  # streams with a quarantined event
    dropped: bool = False  # rows written were dropped from memory (`_drop_oldest`)


@dataclass
class _Load:
    """What one flush writes, in one transaction: `rows`, by read model and id, are `new`'s
    and `changed`'s (what a read-back takes while the load is not committed yet)."""

    position: int
    rows: dict[str, dict[str, Row]]
    new: dict[str, list[Row]]
    changed: dict[str, list[Row]]
    effects: dict[str, Batch]
    quarantined: list[tuple[str, Envelope, str]]


class BulkLoad:
    """Folds pages of upcast envelopes into `models` (a `ReadModels`, tables of their own
    prefix that nothing else writes) and loads them."""

    def __init__(
        self,
        models: ReadModels,
        *,
        rows_bound: int = ROWS_BOUND,
        flush_events: int = FLUSH_EVENTS,
    ) -> None:
        self._models = models
        self._rows_bound = rows_bound
        self._flush_events = flush_events
        with models.db.reading() as cursor:
            progress, held = models._progress_and_held_in(cursor, models.names)
        self._folds = {
            name: _Fold(model, fresh=not progress[name].get(LOG), held=held[name])
            for name, model in models.models.items()
        }
        self._by_type: dict[str, list[_Fold]] = {}
        for fold in self._folds.values():
            self._by_type.setdefault(fold.model.stream_type, []).append(fold)
        self._quarantined: list[tuple[str, Envelope, str]] = []
        self._position = 0
        self._unwritten = 0  # events folded since the last flush
        self._writer = _Writer(models)

    def run(
        self,
        pages: Iterable[Sequence[Envelope]],
        advance: Callable[[int], None],
        *,
        end: int = 0,
    ) -> int:
        """Folds and loads every page; `advance(position)` after each load is committed.
        `end`: the position the pages cover up to, recorded with the last load (pages of some
        stream types only may end before it). Returns the last position loaded."""
        reported = 0
        # The cycle collector is paused for the load: the envelopes and rows are trees
        # (freed by their counts), yet each page's tens of thousands of new dicts set off
        # young collections that cost ~10 % of a worker's CPU. What the load holds is frozen
        # after each page, so no collection after it scans the rows held (a full scan of
        # them cost a third of the load, cProfile); cyclic garbage is freed at the end.
        collecting, frozen = gc.isenabled(), was_frozen()
        gc.disable()
        try:
            for page in pages:
                self._fold_page(page)
                gc.freeze()
                if self._unwritten >= self._flush_events or any(
                    len(f.batch.rows) >= self._rows_bound for f in self._folds.values()
                ):
                    self._flush()
                for position in self._writer.committed():
                    advance(position)
                    reported = position
            if end > self._position:
                self._position = end
                self._unwritten += 1  # nothing folded, but the position to record moved
            if self._unwritten:
                self._flush()
            self._writer.finish()
        finally:
            self._writer.close()
            gc.unfreeze()
            if collecting:
                gc.enable()
            if frozen:  # a worker's startup heap (eventkeep/heap.py), frozen again
                freeze_startup_heap()
        for position in self._writer.committed():
            advance(position)
            reported = position
        return max(reported, self._position)

    # --- folding ---------------------------------------------------------------------------

    def _fold_page(self, page: Sequence[Envelope]) -> None:
        """Folds each event into every read model of its stream type, as
        `ReadModels._apply_or_quarantine` does (inline: this runs per event and read model)."""
        self._read_back(page)
        by_type, quarantined = self._by_type, self._quarantined
        for event in page:
            for fold in by_type.get(event["stream_type"], ()):
                if event["stream_id"] in fold.held:
                    quarantined.append((fold.model.name, event, SET_ASIDE))
                    continue
                try:
                    fold.model.fold_in(fold.batch, event)
                except Exception as error:  # the event, not the database (nothing written)
                    self._set_aside(fold, event, error)
        self._position = page[-1]["position"]
        self._unwritten += len(page)

    def _set_aside(self, fold: _Fold, event: Envelope, error: Exception) -> None:
        name, stream_id = fold.model.name, event["stream_id"]
        log.error(
            "%s: event %s (version %s of %s) quarantined: %r",
            name,
            event["position"],
            event["stream_version"],
            stream_id,
            error,
        )
        self._quarantined.append((name, event, f"{type(error).__name__}: {error}"))
        fold.held.add(stream_id)

    def _read_back(self, page: Sequence[Envelope]) -> None:
        """Reads the rows of the page's streams that the tables may hold and memory does not
        (dropped after a flush, or there before a resumed load): from the loads not yet
        committed, else one statement per read model. The fold never waits for the writer
        here (waiting for each flush to commit first left the fold idle for a third of a
        rebuild, py-spy): a row a load still holds is that load's; one it does not is
        committed already (loads are written in order) or was never written."""
        # Tables fresh at the start hold only rows memory holds too, until some are dropped.
        checked = {
            stream_type: unsure
            for stream_type, folds in self._by_type.items()
            if (unsure := [f for f in folds if f.dropped or not f.fresh])
        }
        if not checked:
            return
        wanted: dict[str, set[str]] = {}
        for event in page:
            first = event["stream_version"] == 1
            stream_id = event["stream_id"]
            for fold in checked.get(event["stream_type"], ()):
                if first and fold.fresh:
                    continue  # a stream's first event: no row anywhere yet
                if stream_id not in fold.batch.rows and stream_id not in fold.batch.seen:
                    wanted.setdefault(fold.model.name, set()).add(stream_id)
        if not wanted:
            return
        with self._models.db.reading() as cursor:
            for name, ids in wanted.items():
                fold = self._folds[name]
                found = self._writer.unwritten(name, ids)
                if rest := ids - found.keys():
                    found.update(fold.model._load(cursor, sorted(rest)))
                fold.batch.rows.update(found)
                fold.stored.update(found)
                # Streams with no row: their first event is on its way, or quarantined.
                fold.batch.seen.update(dict.fromkeys(ids - found.keys(), 0))

    # --- writing ---------------------------------------------------------------------------

    def _flush(self) -> None:
        written: dict[str, dict[str, Row]] = {}
        new: dict[str, list[Row]] = {}
        changed: dict[str, list[Row]] = {}
        effects: dict[str, Batch] = {}
        for name, fold in self._folds.items():
            batch = fold.batch
            rows = written[name] = {i: batch.rows[i] for i in batch.changed}
            new[name] = [row for i, row in rows.items() if i not in fold.stored]
            changed[name] = [row for i, row in rows.items() if i in fold.stored]
            fold.stored.update(batch.changed)
            if batch.extra:
                effects[name] = Batch(extra=batch.extra)
            batch.changed, batch.extra = {}, {}
            _drop_oldest(fold, self._rows_bound)
        self._writer.submit(
            _Load(self._position, written, new, changed, effects, self._quarantined)
        )
        self._quarantined = []
        self._unwritten = 0


def _drop_oldest(fold: _Fold, bound: int) -> None:
    """Keeps the newest half of the bound (streams of a shop are busiest when young); the
    rows dropped are written already."""
    rows = fold.batch.rows
    excess = len(rows) - bound // 2
    if len(rows) < bound or excess <= 0:
        return
    fold.dropped = True
    for stream_id in list(itertools.islice(rows, excess)):
        del rows[stream_id]
        fold.stored.discard(stream_id)
        fold.batch.seen.pop(stream_id, None)  # read back when its stream goes on


class _Writer:
    """Writes loads in order in a thread of its own (one transaction each, with the
    position reached); its failure is raised in the folding thread at its next call."""

    def __init__(self, models: ReadModels) -> None:
        self._models = models
        self._loads: queue.Queue[_Load | None] = queue.Queue(maxsize=1)
        self._done: queue.Queue[int] = queue.Queue()
        self._error: BaseException | None = None
        self._idle = threading.Condition()
        self._pending: collections.deque[_Load] = collections.deque()  # not committed yet
        self._thread = threading.Thread(target=self._run, name="bulk-writer", daemon=True)
        self._thread.start()

    def submit(self, load: _Load) -> None:
        self._raise()
        with self._idle:
            self._pending.append(load)
        while True:  # never blocked for good on a writer that has failed
            try:
                self._loads.put(load, timeout=0.1)
                return
            except queue.Full:
                self._raise()

    def drain(self) -> None:
        """Waits until every load submitted is committed."""
        with self._idle:
            self._idle.wait_for(lambda: not self._pending or self._error is not None)
        self._raise()

    def unwritten(self, name: str, ids: Iterable[str]) -> dict[str, Row]:
        """The rows of `ids` of read model `name` that loads submitted and not committed yet
        hold, each from the last of them."""
        with self._idle:
            loads = list(self._pending)
        found: dict[str, Row] = {}
        for load in reversed(loads):
            rows = load.rows.get(name, {})
            for stream_id in ids:
                if stream_id not in found and (row := rows.get(stream_id)) is not None:
                    found[stream_id] = row
        return found

    def committed(self) -> list[int]:
        self._raise()
        positions = []
        with contextlib.suppress(queue.Empty):
            while True:
                positions.append(self._done.get_nowait())
        return positions

    def finish(self) -> None:
        self.drain()

    def close(self) -> None:
        """Ends the thread after the load it is writing (loads not begun are dropped)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._loads.get_nowait()
        self._loads.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (load := self._loads.get()) is not None:
            try:
                self._write(load)
            except BaseException as error:  # handed to the folding thread
                self._error = error
            with self._idle:
                if self._error is None:  # committed: the tables hold its rows
                    self._pending.popleft()
                self._idle.notify_all()
            if self._error is not None:
                return
            self._done.put(load.position)

    def _write(self, load: _Load) -> None:
        models = self._models
        db = models.db
        with db.transaction() as cursor:
            for name, model in models.models.items():
                if rows := load.new.get(name):
                    db.copy_rows(cursor, model.table(), model.columns, _encoded(model, rows))
                if rows := load.changed.get(name):
                    model.write(
                        cursor,
                        Batch(
                            rows={r["id"]: r for r in rows},
                            changed={r["id"]: r["version"] for r in rows},
                        ),
                    )
                if (effects := load.effects.get(name)) is not None:
                    model.write_effects(cursor, effects)
            for name, event, error in load.quarantined:
                models._quarantine(cursor, name, event, error)
            models.record_progress(cursor, {LOG: load.position})


def _encoded(model: ReadModel, rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    return [model.encoded(row) for row in rows]
