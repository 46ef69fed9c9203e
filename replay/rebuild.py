"""Rebuilding read models from the event store (not Kafka: it keeps no full history), every
event through the one upcaster chain.

A zero-downtime rebuild (`Rebuild`) of some read models (by name) or all fills tables of its
own prefix beside the live ones while queries go on reading the live tables, then swaps them
in atomically (`ReadModels.swap_in`): the live projector continues from the swap point with no
gap and no duplicate, and the read models not named are not touched. The rebuild's tables keep
their progress, so a rebuild that crashed resumes where it stopped when run again.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.log_follower import GlobalLog, LogFollower
from eventkeep.projections.readmodels import GENERATION, LOG, ReadModels, position_of
from eventkeep.projections.registry import READ_MODELS

REBUILD_PREFIX = "rebuild_"
BATCH = 5000  # events per read and per read-model transaction
PROJECTIONS = tuple(READ_MODELS)  # the names `eventkeep replay rebuild` takes

Advance = Callable[[int, int], None]  # (position reached, log head)


def rebuild(global_log: GlobalLog, models: ReadModels, *, batch_size: int = BATCH) -> int:
    """Empties `models` and applies the whole log to them; returns the last position."""
    models.drop()
    models.migrate()
    return apply_log(global_log, models, 0, batch_size, lambda position: None)


def pages(global_log: GlobalLog, after: int, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """The log after `after` as pages of upcast envelopes, the next page read by a thread of
    its own while the caller applies this one (the store's round trips overlap the fold)."""
    ready: queue.Queue[list[dict[str, Any]] | BaseException | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    follower = LogFollower(global_log, after, batch_size=batch_size, stopping=stop)

    def read() -> None:
        try:
            for events in follower.batches(live=False):
                ready.put([upcast(to_envelope(event)) for event in events])
                follower.advance_to(events[-1].id)
            ready.put(None)
        except BaseException as error:  # handed to the caller, raised there
            ready.put(error)

    reader = threading.Thread(target=read, name="rebuild-reader", daemon=True)
    reader.start()
    try:
        while (page := ready.get()) is not None:
            if isinstance(page, BaseException):
                raise page
            yield page
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ready.get_nowait()
            reader.join(0.05)


def apply_log(
    global_log: GlobalLog,
    models: ReadModels,
    after: int,
    batch_size: int,
    advance: Callable[[int], None],
) -> int:
    """Applies the log after `after` to `models` (progress key `log`); the last position."""
    position = after
    for page in pages(global_log, after, batch_size):
        position = page[-1]["position"]
        models.apply(page, {LOG: position})
        advance(position)
    return position


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
        global_log: GlobalLog,
        live: ReadModels,
        names: Iterable[str] | None = None,
        *,
        batch_size: int = BATCH,
    ) -> None:
        self._log = global_log
        self._live = live
        self._target = ReadModels(live.db, REBUILD_PREFIX, names or live.names)
        self._batch_size = batch_size

    def status(self) -> list[RebuildStatus]:
        """Every live read model (not only those this rebuild names)."""
        head = self._log.max_notification_id() or 0  # type: ignore[attr-defined]
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
        self._target.migrate(tag=f"rb{time.time_ns()}_")
        # Where a crashed rebuild stopped (each read model skips what it already holds).
        start = min(p.get(LOG, 0) for p in self._target.progress_by_name().values())
        head = self._log.max_notification_id() or 0  # type: ignore[attr-defined]
        advance(start, head)
        reached = apply_log(
            self._log,
            self._target,
            start,
            self._batch_size,
            lambda position: advance(position, max(head, position)),
        )

        def catch_up(cursor: Any, furthest: int) -> None:
            """Under the swap's lock: the few events committed since, in its transaction."""
            follower = LogFollower(self._log, reached, batch_size=self._batch_size)
            for events in follower.batches(live=False, until=furthest):
                envelopes = [upcast(to_envelope(event)) for event in events]
                self._target.apply_in(cursor, envelopes, {LOG: events[-1].id})
                follower.advance_to(events[-1].id)

        return self._live.swap_in(self._target, catch_up)
