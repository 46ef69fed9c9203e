"""Rebuilding read models from the event store (not Kafka: it keeps no full history), every
event through the one upcaster chain.

A zero-downtime rebuild (`Rebuild`) fills tables of its own prefix beside the live ones while
queries go on reading the live tables, then swaps them in atomically
(`ReadModels.swap_in`): the live projector continues from the swap point with no gap and no
duplicate. The rebuild's tables keep their progress, so a rebuild that crashed resumes where
it stopped when run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain.upcasters import upcast
from eventstore.envelope import to_envelope
from eventstore.relay import GlobalLog
from projections.cache import NoCache
from projections.log_feed import LogFeed
from projections.readmodels import ReadModels

REBUILD_PREFIX = "rebuild_"
PROJECTIONS = ("read_models",)  # users, products, orders, sales: one fold, one progress

Advance = Callable[[int, int], None]  # (position reached, log head)


def rebuild(global_log: GlobalLog, models: ReadModels, *, batch_size: int = 5000) -> int:
    """Empties `models` and applies the whole log to them; returns the last position."""
    models.drop()
    models.migrate()
    feed = LogFeed(global_log, models, NoCache(), batch_size=batch_size)
    while feed.catch_up():
        pass
    return feed.position


@dataclass(frozen=True)
class RebuildStatus:
    live_position: int
    live_generation: int
    head: int
    rebuilding: bool
    rebuild_position: int


class Rebuild:
    def __init__(self, global_log: GlobalLog, live: ReadModels, *, batch_size: int = 5000):
        self._log = global_log
        self._live = live
        self._target = ReadModels(live.db, REBUILD_PREFIX)
        self._batch_size = batch_size

    def status(self) -> RebuildStatus:
        progress = self._live.progress()
        rebuilding = self._target_exists()
        return RebuildStatus(
            live_position=self._live.position(),
            live_generation=progress.get("generation", 0),
            head=self._log.max_notification_id() or 0,  # type: ignore[attr-defined]
            rebuilding=rebuilding,
            rebuild_position=self._target.progress().get("log", 0) if rebuilding else 0,
        )

    def run(self, advance: Advance = lambda position, head: None) -> int:
        """Catches up fresh tables with the log, then swaps them in; returns the generation."""
        # A tag of its own per build: index names outlive the renames of the swap.
        self._target.migrate(tag=f"rb{time.time_ns()}_")
        feed = LogFeed(self._log, self._target, NoCache(), batch_size=self._batch_size)
        head = self._log.max_notification_id() or 0  # type: ignore[attr-defined]
        advance(feed.position, head)
        while feed.catch_up():
            head = max(head, feed.position)
            advance(feed.position, head)

        def catch_up(cursor: Any, furthest: int) -> None:
            """Under the swap's lock: the few events committed since, in its transaction."""
            while feed.position < furthest:
                events = self._log.select_notifications(
                    feed.position, self._batch_size, stop=furthest, inclusive_of_start=False
                )
                if not events:
                    break
                envelopes = [upcast(to_envelope(event)) for event in events]
                self._target.apply_in(cursor, envelopes, {"log": events[-1].id})
                feed.position = events[-1].id

        return self._live.swap_in(self._target, catch_up)

    def _target_exists(self) -> bool:
        with self._live.db.reading() as cursor:
            return self._live.db.table_exists(cursor, self._target.table("progress"))
