"""The query side as the API sees it: read models behind the cache, and how far they are."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from projections.cache import Cache, Row
from projections.readmodels import ReadModels


class PolledPosition:
    """The read models' position, re-read every `interval` seconds by a thread of its own.

    Every query asks for it; answering from memory keeps that off the request path (a value
    a few milliseconds old is still a true lower bound). A failed read keeps the last value.
    """

    def __init__(self, read: Callable[[], int], interval: float = 0.01) -> None:
        self._read = read
        self._interval = interval
        self._value = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="position", daemon=True)
        self._thread.start()

    def __call__(self) -> int:
        return self._value

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):  # the store is down: queries say so
                self._value = self._read()
            self._stopping.wait(self._interval)


class Queries:
    def __init__(self, models: ReadModels, cache: Cache, position: Callable[[], int]) -> None:
        """`position` answers from memory: it is called on the event loop."""
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
            reached = self.position()
            if reached >= position or time.monotonic() >= deadline:
                return reached
            await asyncio.sleep(0.002)

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
