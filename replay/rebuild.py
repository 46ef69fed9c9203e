"""Rebuilding read models from the event store (not Kafka: it keeps no full history), every
event through the one upcaster chain.

A zero-downtime rebuild (`Rebuild`) of some read models (by name) or all fills tables of its
own prefix beside the live ones while queries go on reading the live tables, then swaps them
in atomically (`ReadModels.swap_in`): the live projector continues from the swap point with no
gap and no duplicate, and the read models not named are not touched. The rebuild's tables keep
their progress, so a rebuild that crashed resumes where it stopped when run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from eventkeep.domain.upcasters import upcast
from eventkeep.projections.bulk import FLUSH_EVENTS, ROWS_BOUND, BulkLoad, catch_up
from eventkeep.projections.bulk_workers import WORKERS, can_split, in_workers
from eventkeep.projections.log_pages import EnvelopeLog, upcast_pages
from eventkeep.projections.readmodels import GENERATION, LOG, ReadModels, position_of
from eventkeep.projections.registry import READ_MODELS

REBUILD_PREFIX = "rebuild_"
BATCH = 5000  # events per read and per read-model transaction
PROJECTIONS = tuple(READ_MODELS)  # the names `eventkeep replay rebuild` takes

Advance = Callable[[int, int], None]  # (position reached, log head)


def rebuild(
    global_log: EnvelopeLog,
    models: ReadModels,
    *,
    batch_size: int = BATCH,
    bulk: bool = True,
    rows_bound: int = ROWS_BOUND,
    flush_events: int = FLUSH_EVENTS,
    workers: int = 1,
) -> int:
    """Empties `models` and applies the whole log to them; returns the last position. `bulk`:
    folded in memory and loaded (`projections/bulk.py`), indexes after, in up to `workers`
    processes (`projections/bulk_workers.py`); else event by event, a batch per transaction
    (the reference the bulk path is tested against)."""
    models.drop()
    if not bulk:
        models.migrate()
        return catch_up(global_log, models, 0, lambda changes, position: None, batch_size)
    models.migrate(defer_indexes=True)
    reached = bulk_load(
        global_log,
        models,
        0,
        lambda position: None,
        batch_size=batch_size,
        rows_bound=rows_bound,
        flush_events=flush_events,
        workers=workers,
    )
    models.build_deferred(models.prefix)
    return reached


def bulk_load(
    global_log: EnvelopeLog,
    models: ReadModels,
    start: int,
    advance: Callable[[int], None],
    *,
    batch_size: int,
    flush_events: int,
    workers: int,
    rows_bound: int = ROWS_BOUND,
) -> int:
    """Loads `models` (tables migrated with their indexes deferred) from the log after
    `start`: in worker processes by stream type when it can (PostgreSQL, more than one
    group), else in this process. Returns the position reached."""
    if can_split(global_log, models, workers):
        return in_workers(
            "load",
            global_log,
            models,
            lambda changes, position: advance(position),
            workers=workers,
            batch_size=batch_size,
            flush_events=flush_events,
        )
    load = BulkLoad(models, rows_bound=rows_bound, flush_events=flush_events)
    pages = upcast_pages(global_log, start, batch_size, only=models.read_sealed())
    return load.run(pages, advance)


@dataclass(frozen=True)
class RebuildStatus:
    """Where one live read model is, and any rebuild of it in progress."""

    name: str
    position: int
    generation: int
    head: int
    rebuilding: bool
    rebuild_position: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


class Rebuild:
    """Rebuilds the read models `names` (default: all) of `live` from the log."""

    def __init__(
        self,
        global_log: EnvelopeLog,
        live: ReadModels,
        names: Iterable[str] | None = None,
        *,
        batch_size: int = BATCH,
        flush_events: int = FLUSH_EVENTS,
        workers: int = WORKERS,
    ) -> None:
        self._log = global_log
        self._live = live
        self._target = ReadModels(live.db, REBUILD_PREFIX, names or live.names)
        self._batch_size = batch_size
        self._flush_events = flush_events
        self._workers = workers

    def status(self) -> list[RebuildStatus]:
        """Every live read model (not only those this rebuild names)."""
        head = self._log.max_notification_id() or 0
        live = self._live.progress_by_name()
        others = ReadModels(self._live.db, REBUILD_PREFIX, self._live.names)
        with self._live.db.reading() as cursor:
            building = {name for name, model in others.models.items() if model.exists(cursor)}
        rebuilt = others.progress_by_name() if building else {}
        return [
            RebuildStatus(
                name=name,
                position=position_of(progress),
                generation=progress.get(GENERATION, 0),
                head=head,
                rebuilding=name in building,
                rebuild_position=rebuilt.get(name, {}).get(LOG, 0),
            )
            for name, progress in live.items()
        ]

    def run(self, advance: Advance = lambda position, head: None) -> dict[str, int]:
        """Catches up fresh tables with the log, then swaps them in; returns the new
        generation of each read model rebuilt."""
        # A tag of its own per build: index names outlive the renames of the swap.
        tag = f"rb{time.time_ns()}_"
        self._target.migrate(tag=tag, defer_indexes=True)
        # Where a crashed rebuild stopped (each read model skips what it already holds).
        start = min(p.get(LOG, 0) for p in self._target.progress_by_name().values())
        head = self._log.max_notification_id() or 0
        advance(start, head)
        reached = bulk_load(
            self._log,
            self._target,
            start,
            lambda position: advance(position, max(head, position)),
            batch_size=self._batch_size,
            flush_events=self._flush_events,
            workers=self._workers,
        )
        reached = max(reached, start)
        self._target.build_deferred(tag)

        def catch_up(cursor: Any, furthest: int) -> None:
            """Under the swap's lock: the few events committed since, in its transaction."""
            position, only = reached, self._target.read_sealed()
            while page := self._log.select_envelopes(
                position, self._batch_size, until=furthest, only=only
            ):
                position = page[-1]["position"]
                self._target.apply_in(cursor, [upcast(e) for e in page], {LOG: position})

        return self._live.swap_in(self._target, catch_up)
