"""The write path's aggregate cache: recently used aggregates, trusted without asking the store.

A command loads its aggregate from here without a database round trip. A copy may be stale
(another process appended to the stream since): it is never checked on load, because the
group committer's version check refuses an append built on it (`StreamChangedError`), the
write store then evicts the stream and the command bus decides again on a fresh load. So a
stale copy costs one retry, never a wrong write.

Bounded (least recently used goes first) and thread-safe; an entry is only ever replaced by
a newer version of its aggregate, so a slow load cannot overwrite what a save just cached.
Callers get a copy as deep as it needs to be: a command that fails after changing its copy
leaves no trace here (`commands.copies.private_copy`: immutable attribute values are shared,
containers copied deeply).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from uuid import UUID

from eventsourcing.domain import Aggregate

from eventkeep.commands.copies import private_copy


class AggregateCache:
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("the aggregate cache needs room for at least one aggregate")
        self.maxsize = maxsize
        self._entries: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, stream_id: UUID) -> Aggregate | None:
        """A copy of the cached aggregate (None: not cached)."""
        with self._lock:
            aggregate = self._entries.get(stream_id)
            if aggregate is None:
                return None
            self._entries.move_to_end(stream_id)
        return private_copy(aggregate)

    def put(self, aggregate: Aggregate) -> None:
        """Keeps `aggregate` (the caller's object: it must not change it afterwards) unless a
        newer version of it is cached already."""
        with self._lock:
            cached = self._entries.get(aggregate.id)
            if cached is not None and cached.version >= aggregate.version:
                return
            self._entries[aggregate.id] = aggregate
            self._entries.move_to_end(aggregate.id)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def evict(self, stream_ids: list[UUID]) -> None:
        with self._lock:
            for stream_id in stream_ids:
                self._entries.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._entries)
