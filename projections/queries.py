"""The query side as the API sees it: read models behind the cache, and how far they are."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from projections.cache import Cache, Row
from projections.readmodels import ReadModels


class CachedPosition:
    """The read models' position, read at most every `max_age` seconds (it is asked for by
    every query; a value a little old is still a true lower bound)."""

    def __init__(self, read: Callable[[], int], max_age: float = 0.02) -> None:
        self._read = read
        self._max_age = max_age
        self._value = 0
        self._read_at = -1.0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            if time.monotonic() - self._read_at >= self._max_age:
                self._value = self._read()
                self._read_at = time.monotonic()
            return self._value


class Queries:
    def __init__(self, models: ReadModels, cache: Cache, position: Callable[[], int]) -> None:
        self.models = models
        self.cache = cache
        self.position = position

    def get(self, kind: str, row_id: str) -> Row | None:
        """By id, cache first; a miss is filled from the read model."""
        row = self.cache.get(kind, row_id)
        if row is None:
            row = self.models.get(kind, row_id)
            if row is not None:
                self.cache.fill(kind, row)
        return row

    async def reach(self, position: int, timeout: float) -> int:
        """Waits up to `timeout` seconds for the read models to reach `position`; returns
        where they are (below `position` when the wait ran out)."""
        deadline = time.monotonic() + timeout
        while True:
            reached = await run_in_threadpool(self.position)
            if reached >= position or time.monotonic() >= deadline:
                return reached
            await asyncio.sleep(0.005)

    def status(self, head: int) -> dict[str, Any]:
        """Position and lag, for `GET /v1/projections`."""
        progress = self.models.progress()
        position = self.models.position()
        return {
            "name": "read_models",
            "position": position,
            "head": head,
            "lag": max(0, head - position),
            "progress": progress,
        }
