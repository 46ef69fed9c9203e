"""A projector's cache writes — each changed row's answer (`Change.answer`), or a tombstone
where a change carries none — written by a thread of their own while the projector polls
and applies its next batch: one Redis round trip per batch (more while Redis is slow: up to
its timeout) no longer sits between one batch's commit and the next one's poll. They are
handed over only after the batch committed, in commit order; the cache's version rule keeps
an older answer from replacing a newer one whatever the order they reach Redis in.

Each hand-over gets a ticket; `written` is the last ticket whose changes the cache holds,
with nothing of it or before it waiting for Redis: the projector records a batch's `cached:`
watermarks (what `X-Min-Position` trusts the cache up to) only once its ticket is written.
A Redis outage keeps the changes in the cache (`Cache.publish` keeps what fails); the next
hand-over, even an empty one (the projector's idle polls), tries them again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from eventkeep.projections.cache import Cache
from eventkeep.projections.readmodel import Change

log = logging.getLogger(__name__)


class TombstoneWriter:
    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._changes: list[Change] = []
        self._handed = 0  # tickets handed over
        self._taken = 0  # tickets the thread has taken up
        self._written = 0
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="cache-tombstones", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        """The last ticket whose changes (and every earlier one's) the cache holds."""
        with self._wake:
            return self._written

    def hand(self, changes: Iterable[Change]) -> int:
        """Queues `changes` for the cache (none: retry what waits); their ticket."""
        with self._wake:
            self._changes.extend(changes)
            self._handed += 1
            self._wake.notify()
            return self._handed

    def close(self, timeout: float = 5.0) -> None:
        """Writes what was handed over (bounded by Redis's timeouts), then ends the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or self._handed > self._taken)
                if self._handed == self._taken:  # closed, nothing left
                    return
                changes, self._changes = self._changes, []
                ticket = self._taken = self._handed
            try:
                self._cache.publish(changes)  # keeps what Redis refused, for the next hand-over
            except Exception:  # not Redis's unavailability: kept too, tried with the next
                log.exception("cache writes failed; tried again with the next batch")
                with self._wake:
                    self._changes[:0] = changes
                continue
            if self._cache.settled():
                with self._wake:
                    self._written = ticket
