"""The cache in front of the by-id queries, and the one rule that keeps it honest.

An entry holds the query's answer as it goes on the wire: the row as the API shows it,
encoded once as JSON (`readmodel.encode`) when it was read from the read model. A hit is sent
as those bytes, with no decoding, model or validation between the cache and the socket.

Every entry carries the read-model version it holds. After a batch commits, the projector
writes a *tombstone* at the new version for each row it changed (`forget`); a query that
missed reads the row and offers it back (`fill`), which is accepted only when it is at least
as new as what is there. So a query that read version 5 just before the projector committed
version 6 cannot put 5 back over the tombstone of 6: the cache never serves a value older
than the read model it came from. Entries are kept per *generation* of the read-model tables
(a rebuild swapped in starts a new one), so nothing cached from the tables a rebuild replaced
is served after the swap.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from eventkeep.projections.readmodel import Change


class Cache(Protocol):
    async def get_async(self, kind: str, row_id: str, generation: int) -> bytes | None:
        """The cached answer (`readmodel.encode`d row), or None on a miss (or a tombstone); never
        blocks the event loop."""
        ...

    def fill(self, kind: str, row_id: str, version: int, body: bytes, generation: int) -> None:
        """Offers a row read from the read model (its `encode`d answer, at `version`); kept
        only if not older than the entry."""
        ...

    def settled(self) -> bool:
        """Every tombstone given to `forget` is written (none waits for the cache)."""
        ...

    def forget(self, changes: Iterable[Change]) -> None:
        """Marks changed rows stale at their new versions (after the read model committed)."""
        ...

    async def warm_async(self, connections: int) -> None:
        """Opens what the first requests would otherwise open (an API worker, at startup)."""
        ...


def accepts_fill(current_version: int | None, current_is_row: bool, version: int) -> bool:
    """A fill wins over nothing, over an older entry, and over a tombstone of its own version."""
    if current_version is None:
        return True
    return version > current_version or (version == current_version and not current_is_row)


class LocalCache:
    """In-process LRU cache: the embedded mode's, and any process's when no Redis is set."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._entries: OrderedDict[tuple[int, str, str], tuple[int, bytes | None]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, kind: str, row_id: str, generation: int) -> bytes | None:
        key = (generation, kind, row_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    async def get_async(self, kind: str, row_id: str, generation: int) -> bytes | None:
        return self.get(kind, row_id, generation)

    def fill(self, kind: str, row_id: str, version: int, body: bytes, generation: int) -> None:
        key = (generation, kind, row_id)
        with self._lock:
            current = self._entries.get(key)
            held, is_row = (
                (None, False) if current is None else (current[0], current[1] is not None)
            )
            if accepts_fill(held, is_row, version):
                self._put(key, version, body)

    def forget(self, changes: Iterable[Change]) -> None:
        with self._lock:
            for change in changes:
                key = (change.generation, change.kind, change.id)
                current = self._entries.get(key)
                if current is None or current[0] < change.version:
                    self._put(key, change.version, None)

    def settled(self) -> bool:
        return True

    async def warm_async(self, connections: int) -> None:
        pass  # in memory: nothing to open

    def _put(self, key: tuple[int, str, str], version: int, body: bytes | None) -> None:
        self._entries[key] = (version, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


class NoCache:
    """For API processes with no Redis in the distributed mode: a process-local cache there
    would never hear of the projectors' changes, so there is none."""

    async def get_async(self, kind: str, row_id: str, generation: int) -> bytes | None:
        return None

    def fill(self, kind: str, row_id: str, version: int, body: bytes, generation: int) -> None:
        pass

    def settled(self) -> bool:
        return True

    def forget(self, changes: Iterable[Change]) -> None:
        pass

    async def warm_async(self, connections: int) -> None:
        pass
