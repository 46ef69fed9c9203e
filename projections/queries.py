"""The query side as the API sees it: each read model's queries behind the cache, and how far
each read model is."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from eventkeep.projections.cache import Cache
from eventkeep.projections.readmodel import Progress, ReadModelQueries
from eventkeep.projections.readmodels import (
    GENERATION,
    ReadModels,
    cache_position_of,
    position_of,
)
from eventkeep.projections.registry import READ_MODELS

# After a reader last waited for a position, progress is re-read every `interval` for this
# long; otherwise every `idle_interval`.
HOT_SECONDS = 1.0


class PolledProgress:
    """Each read model's position and generation, re-read by a thread of its own (one query for
    all of them): every `interval` seconds while readers wait for a position (`want`), every
    `idle_interval` otherwise.

    Every query asks for them; answering from memory keeps that off the request path (a
    position a few milliseconds old is still a true lower bound). Only a wait for a position
    (`X-Min-Position`) needs it fresh: polling at 100 Hz all the time cost each API worker
    about 5 % of a core and a thread taking the GIL from its event loop 100 times a second.
    A failed read keeps the last values.
    """

    def __init__(
        self,
        models: ReadModels,
        interval: float = 0.01,
        idle_interval: float = 0.1,
        fence: Callable[[], object] | None = None,
    ) -> None:
        self._models = models
        # Called after each read, before its values are published (the near cache's: every
        # tombstone the progress covers has reached this process's local copies).
        self._fence = fence
        self._interval = interval
        self._idle_interval = idle_interval
        self._positions: dict[str, int] = {}
        self._generations: dict[str, int] = {}
        self._cached: dict[str, int] = {}
        self._quarantined: dict[str, dict[str, dict[str, Any]]] = {}
        self.read_at = float("-inf")  # time.monotonic() of the last read that succeeded
        self._wanted_at = float("-inf")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="position", daemon=True)
        self._thread.start()

    def want(self) -> None:
        """A reader waits for a position: read at once, then often for `HOT_SECONDS`."""
        now = time.monotonic()
        idle = now - self._wanted_at >= HOT_SECONDS
        self._wanted_at = now
        if idle:
            self._wake.set()

    def position_of(self, name: str) -> int:
        return self._positions.get(name, 0)

    def generation_of(self, name: str) -> int:
        return self._generations.get(name, 0)

    def quarantined_of(self, name: str) -> dict[str, dict[str, Any]]:
        return self._quarantined.get(name, {})

    def cache_position_of(self, name: str) -> int:
        return self._cached.get(name, 0)

    @property
    def position(self) -> int:
        """Where every read model is."""
        return min(self._positions.values(), default=0)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(5)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):  # the store is down: queries say so
                progress = self._models.progress_by_name()
                quarantined = self._models.quarantined_streams()
                if self._fence is not None:
                    self._fence()
                self._positions = {name: position_of(p) for name, p in progress.items()}
                self._cached = {name: cache_position_of(p) for name, p in progress.items()}
                self._generations = {name: p.get(GENERATION, 0) for name, p in progress.items()}
                self._quarantined = quarantined
                self.read_at = time.monotonic()
            hot = time.monotonic() - self._wanted_at < HOT_SECONDS
            self._wake.wait(self._interval if hot else self._idle_interval)
            self._wake.clear()


class Queries:
    """Every read model's queries (`of(name)`), over one cache and one source of progress."""

    def __init__(self, models: ReadModels, cache: Cache, progress: Progress) -> None:
        self.models = models
        self.cache = cache
        self.progress = progress
        self._queries = {
            name: READ_MODELS[name].queries(model, self) for name, model in models.models.items()
        }

    def of(self, name: str) -> ReadModelQueries:
        """The queries of the read model `name` (its module's subclass)."""
        return self._queries[name]

    @property
    def names(self) -> list[str]:
        return list(self._queries)

    def position(self, name: str | None = None) -> int:
        """Where the read model `name` is; without a name, where all of them are."""
        if name is not None:
            return self.progress.position_of(name)
        return min((self.progress.position_of(n) for n in self._queries), default=0)

    async def reach(
        self,
        position: int,
        timeout: float,
        name: str | None = None,
        *,
        while_: Callable[[], bool] | None = None,
    ) -> int:
        """Waits up to `timeout` seconds (and while `while_()` holds) for the read model `name`
        (or all of them) to reach `position`; returns where it is (below `position` when the
        wait ran out)."""
        deadline = time.monotonic() + timeout
        self.progress.want()
        while True:
            reached = self.position(name)
            if reached >= position or time.monotonic() >= deadline:
                return reached
            if while_ is not None and not while_():
                return reached
            await asyncio.sleep(0.002)

    def status(self, head: int) -> list[dict[str, Any]]:
        """Each read model's position, lag and generation, for `GET /v1/projections`."""
        answer = []
        quarantine = self.models.quarantine()
        for name, progress in self.models.progress_by_name().items():
            position = position_of(progress)
            answer.append(
                {
                    "name": name,
                    "position": position,
                    "head": head,
                    "lag": max(0, head - position),
                    "generation": progress.get(GENERATION, 0),
                    "progress": progress,
                    "quarantined": [q for q in quarantine if q["projection"] == name],
                }
            )
        return answer
