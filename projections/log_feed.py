"""The embedded mode's feed: the projectors follow the SQLite log in-process.

The same read models and the same apply methods as the Kafka feed; only the transport differs.
The feed's progress is one key per read model, `log`, the last position applied, stored with
the rows. The feed also tells queries where each read model is (`position_of`, all of them
applied together, and `generation_of`, each read model's tables).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.log_follower import GlobalLog, LogFollower
from eventkeep.eventstore.records import LoggedEvent
from eventkeep.metrics import observe_applied, observe_idle
from eventkeep.projections.bulk import CATCH_UP_BATCH, catch_up
from eventkeep.projections.cache import Cache
from eventkeep.projections.log_pages import EnvelopeLog
from eventkeep.projections.readmodel import Change, Envelope, Fill
from eventkeep.projections.readmodels import GENERATION, LOG, ReadModels

log = logging.getLogger(__name__)


def fill_from(store: Any) -> Fill:
    """Closes a gap in a stream's versions from the event store (its `stream_history`)."""

    def fill(stream_id: str, after: int, before: int) -> list[Envelope]:
        return [
            upcast(to_envelope(event))
            for event in store.stream_history(stream_id)
            if after < event.originator_version < before
        ]

    return fill


class LogFeed:
    def __init__(
        self,
        global_log: GlobalLog,
        models: ReadModels,
        cache: Cache,
        *,
        batch_size: int = 1000,
        poll_interval: float = 0.05,
    ) -> None:
        self._models = models
        self._log = global_log
        if models.fill is None:
            models.fill = fill_from(global_log)
        self._cache = cache
        self._quarantined: dict[str, dict[str, dict[str, Any]]] = {}
        self._follower = LogFollower(
            global_log,
            min((p.get(LOG, 0) for p in models.progress_by_name().values()), default=0),
            batch_size=batch_size,
            poll_interval=poll_interval,
        )
        self._thread: threading.Thread | None = None
        self._generations: dict[str, int] = {}  # of each read model's tables (see swap_in)

    @property
    def position(self) -> int:
        """Every event up to here is applied, to every read model."""
        return self._follower.position

    def position_of(self, name: str) -> int:
        return self._follower.position

    def generation_of(self, name: str) -> int:
        return self._generations.get(name, 0)

    def cache_position_of(self, name: str) -> int:
        """Tombstones are given to the cache before the position moves."""
        return self._follower.position

    def quarantined_of(self, name: str) -> dict[str, dict[str, Any]]:
        """The read model's quarantined streams (see ReadModels.quarantine)."""
        return self._quarantined.get(name, {})

    def want(self) -> None:
        """Nothing to do: the position is this process's own, moved by each commit."""

    def _read_generations(self) -> None:
        progress = self._models.progress_by_name()
        self._generations = {name: p.get(GENERATION, 0) for name, p in progress.items()}
        self._refresh_quarantine()

    def _refresh_quarantine(self) -> None:
        """Which streams are quarantined; those a retry (another process) took out are
        forgotten by the cache, which may hold their row from before the quarantine."""
        before, self._quarantined = self._quarantined, self._models.quarantined_streams()
        released: list[Change] = []
        for name, streams in before.items():
            model = self._models[name]
            for stream_id in streams.keys() - self._quarantined.get(name, {}).keys():
                row = model.get(stream_id)
                if row is not None and model.cache_kind is not None:
                    generation = self._generations.get(name, 0)
                    released.append(Change(model.cache_kind, stream_id, row["version"], generation))
        if released:
            self._cache.publish(released)

    def start(self) -> None:
        self._follower.signal  # noqa: B018  (registered for commits before the first read)
        self._thread = threading.Thread(target=self._run, name="log-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._follower.stop()
        if self._thread is not None:
            self._thread.join(10)

    def _apply(self, events: list[LoggedEvent]) -> None:
        self._read_generations()
        envelopes = [upcast(to_envelope(event)) for event in events]
        changes = self._models.apply(envelopes, {LOG: events[-1].id})
        self._applied(changes, events[-1].id)
        observe_applied(self._models.names, envelopes)

    def _applied(self, changes: list[Change], position: int) -> None:
        self._cache.publish(changes)
        self._refresh_quarantine()
        self._follower.advance_to(position)

    def catch_up(self) -> None:
        """Far behind the log (a read model new to it, or a feed stopped long): the bulk
        catch-up first (`projections/bulk.py`), then the live feed from where it ended."""
        head = self._log.max_notification_id() or 0  # type: ignore[attr-defined]
        if head - self._follower.position < CATCH_UP_BATCH:
            return
        self._read_generations()
        start = self._follower.position
        reached = catch_up(
            cast(EnvelopeLog, self._log), self._models, start, self._applied, CATCH_UP_BATCH
        )
        log.info("caught up from position %d to %d in bulk", start, reached)

    def _idle(self) -> None:
        self._read_generations()
        self._cache.publish(())  # tombstones a cache outage held back
        observe_idle(self._models.names)

    def _run(self) -> None:
        while not self._follower.stopped:
            try:
                self.catch_up()
                for batch in self._follower.batches(on_idle=self._idle):
                    self._apply(batch)
            except Exception:  # a bad batch must not end the feed: log, wait, retry
                log.exception("projecting from the log failed; retrying")
                self._follower.pause(1.0)
