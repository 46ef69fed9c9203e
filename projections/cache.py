"""The cache in front of the by-id queries, and the one rule that keeps it honest.

An entry holds the query's answer as it goes on the wire: the row as the API shows it,
encoded once as JSON (`ReadModel.answer`). A hit is sent as those bytes, with no decoding,
model or validation between the cache and the socket.

Every entry carries the read-model version it holds. After a batch commits, the projector
writes each row it changed at its new version (`publish`): the row's answer, encoded by the
same `ReadModel.answer` from the row it wrote, so the next read is a hit; a change that
carries no answer (a stream taken out of the quarantine) is a *tombstone*, which a read
misses. A query that missed reads the row and offers it back (`fill`). Both are accepted
only when they are newer than what is there (a tombstone of the same version gives way to
the answer of that version): so a query that read version 5 just before the projector
committed version 6 cannot put 5 back over 6, nor can a late batch of a former partition
owner (or a write retried after a Redis outage) put an older answer over a newer one: the
cache never serves a value older than the read model it came from. An erasure is a change
like any other: its answer, the row without the personal data, replaces the one before.
Entries are kept per *generation* of the read-model tables (a rebuild swapped in starts a new
one), so nothing cached from the tables a rebuild replaced is served after the swap.
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
        """Every change given to `publish` is written (none waits for the cache)."""
        ...

    def publish(self, changes: Iterable[Change]) -> None:
        """Writes the changed rows at their new versions, after the read model committed:
        each one's answer, or a tombstone where it carries none; never over a newer entry."""
        ...

    async def warm_async(self, connections: int) -> None:
        """Opens what the first requests would otherwise open (an API worker, at startup)."""
        ...


def accepts(current_version: int | None, current_is_row: bool, version: int, is_row: bool) -> bool:
    """An answer (`is_row`) wins over nothing, over an older entry, and over a tombstone of
    its own version; a tombstone over nothing and over an older entry."""
    if current_version is None or version > current_version:
        return True
    return version == current_version and is_row and not current_is_row


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
        with self._lock:
            self._offer((generation, kind, row_id), version, body)

    def publish(self, changes: Iterable[Change]) -> None:
        with self._lock:
            for change in changes:
                self._offer(
                    (change.generation, change.kind, change.id), change.version, change.answer
                )

    def _offer(self, key: tuple[int, str, str], version: int, body: bytes | None) -> None:
        current = self._entries.get(key)
        held, is_row = (None, False) if current is None else (current[0], current[1] is not None)
        if accepts(held, is_row, version, body is not None):
            self._put(key, version, body)

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

    def publish(self, changes: Iterable[Change]) -> None:
        pass

    async def warm_async(self, connections: int) -> None:
        pass
