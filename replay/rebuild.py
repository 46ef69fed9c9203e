"""Rebuilding read models from the event store, upcasting every event on the way."""

from __future__ import annotations

from collections.abc import Callable

from eventstore.relay import GlobalLog
from projections.cache import NoCache
from projections.log_feed import LogFeed
from projections.readmodels import ReadModels


def rebuild(
    global_log: GlobalLog,
    models: ReadModels,
    *,
    on_batch: Callable[[int], None] = lambda position: None,
) -> int:
    """Empties `models` and applies the whole log to them; returns the last position."""
    models.drop()
    models.migrate()
    feed = LogFeed(global_log, models, NoCache(), batch_size=5000)
    while feed.catch_up():
        on_batch(feed.position)
    return feed.position
