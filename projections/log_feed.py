"""The embedded mode's feed: the projectors follow the SQLite log in-process.

The same read models and the same fold as the Kafka feed; only the transport differs. The
feed's progress is one key, `log`, the last position applied, stored with the rows. The feed
also tells queries where the read models are (`position`, `generation`).
"""

from __future__ import annotations

import logging
import threading

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.log_follower import GlobalLog, LogFollower
from eventkeep.eventstore.records import LoggedEvent
from eventkeep.projections.cache import Cache
from eventkeep.projections.readmodels import GENERATION, ReadModels

log = logging.getLogger(__name__)


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
        self._cache = cache
        self._follower = LogFollower(
            global_log,
            models.progress().get("log", 0),
            batch_size=batch_size,
            poll_interval=poll_interval,
        )
        self._thread: threading.Thread | None = None
        self.generation = 0  # of the tables (see ReadModels.swap_in)

    @property
    def position(self) -> int:
        """Every event up to here is applied."""
        return self._follower.position

    def start(self) -> None:
        self._follower.signal  # noqa: B018  (registered for commits before the first read)
        self._thread = threading.Thread(target=self._run, name="log-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._follower.stop()
        if self._thread is not None:
            self._thread.join(10)

    def _apply(self, events: list[LoggedEvent]) -> None:
        self.generation = self._models.progress().get(GENERATION, 0)
        envelopes = [upcast(to_envelope(event)) for event in events]
        changes = self._models.apply(envelopes, {"log": events[-1].id})
        self._cache.forget(changes)
        self._follower.advance_to(events[-1].id)

    def _idle(self) -> None:
        self.generation = self._models.progress().get(GENERATION, 0)
        self._cache.forget(())  # tombstones a cache outage held back

    def _run(self) -> None:
        while not self._follower.stopped:
            try:
                for batch in self._follower.batches(on_idle=self._idle):
                    self._apply(batch)
            except Exception:  # a bad batch must not end the feed: log, wait, retry
                log.exception("projecting from the log failed; retrying")
                self._follower.pause(1.0)
