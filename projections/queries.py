"""The query side as the API sees it: read models behind the cache, and how far they are."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from eventkeep.projections.cache import Cache, Row
from eventkeep.projections.readmodels import GENERATION, ReadModels, position_of


class PolledProgress:
    """The read models' position and generation, re-read every `interval` seconds by a
    thread of its own.

    Every query asks for them; answering from memory keeps that off the request path (a
    position a few milliseconds old is still a true lower bound). A failed read keeps the
    last values.
    """

    def __init__(self, models: ReadModels, interval: float = 0.01) -> None:
        self._models = models
        self._interval = interval
        self.position = 0
        self.generation = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="position", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):  # the store is down: queries say so
                progress = self._models.progress()
                self.position = position_of(progress)
                self.generation = progress.get(GENERATION, 0)
            self._stopping.wait(self._interval)


class Progress(Protocol):
    """Where the read models are; answered from memory (it is asked on the event loop)."""

    @property
    def position(self) -> int: ...

    @property
    def generation(self) -> int: ...


class Queries:
    def __init__(self, models: ReadModels, cache: Cache, progress: Progress) -> None:
        self.models = models
        self.cache = cache
        self.progress = progress

    def position(self) -> int:
        return self.progress.position

    async def get_async(self, kind: str, row_id: str) -> Row | None:
        """By id, cache first; a miss is read from the read model (in a thread) and offered
        to the cache. The generation is read first: a row read after a swap may be cached
        under the old one, never an old row under the new one."""
        generation = self.progress.generation
        row = await self.cache.get_async(kind, row_id, generation)
        if row is None:
            row = await run_in_threadpool(self._read_and_fill, kind, row_id, generation)
        return row

    def _read_and_fill(self, kind: str, row_id: str, generation: int) -> Row | None:
        row = self.models.get(kind, row_id)
        if row is not None:
            self.cache.fill(kind, row, generation)
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
