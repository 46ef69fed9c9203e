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
from eventkeep.eventstore.relay import GlobalLog
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
        self._log = global_log
        self._models = models
        self._cache = cache
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._woken = threading.Event()
        self._thread: threading.Thread | None = None
        self.position = models.progress().get("log", 0)
        self.generation = 0  # of the tables (see ReadModels.swap_in)

    def start(self) -> None:
        # Woken by this process's own commits (the embedded store), polling for the rest.
        if (register := getattr(self._log, "wake_after_commit", None)) is not None:
            register(self)
        self._thread = threading.Thread(target=self._run, name="log-feed", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._woken.set()

    def stop(self) -> None:
        self._stopping.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join(10)

    def catch_up(self) -> int:
        """Applies one batch; returns how many events it held."""
        self.generation = self._models.progress().get(GENERATION, 0)
        events = self._log.select_notifications(
            self.position, self._batch_size, inclusive_of_start=False
        )
        if not events:
            self._cache.forget(())  # tombstones a cache outage held back
            return 0
        envelopes = [upcast(to_envelope(event)) for event in events]
        changes = self._models.apply(envelopes, {"log": events[-1].id})
        self._cache.forget(changes)
        self.position = events[-1].id
        return len(events)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._woken.clear()
                if self.catch_up() < self._batch_size:
                    self._woken.wait(self._poll_interval)
            except Exception:  # a bad batch must not end the feed: log, wait, retry
                log.exception("projecting from the log failed; retrying")
                self._stopping.wait(1.0)
