"""An API process's near cache: the Redis cache's answers kept in the process, coherent with
Redis by Redis's own invalidation messages (server-assisted client-side caching, broadcast
mode), so that a by-id hit costs one dict lookup instead of a round trip over TLS.
redis-py's own client-side cache (`cache_config`) is not used: its asyncio client has none,
and it has no fence to tie its invalidations to the read models' progress (below).

What is kept here is only ever what Redis answered; every entry under the cache's namespace
that changes in Redis — a projector's tombstone, a fill, an expiry, an eviction, a flush —
makes Redis push an invalidation to this process's tracking connection, and a thread of its
own (`_listen`) drops the local copy as the push arrives. Three rules close the gaps:

* **A value read while its key was invalidated is not kept.** Each invalidation takes a
  sequence number; a `GET` remembers the number before it asked, and its answer is kept only
  if no invalidation of that key (nor a flush, nor a lost connection) came after it.
* **No entry outlives the tracking connection.** The local copies are served only while the
  connection is up and answered a fence within `FRESH_SECONDS`; a lost connection empties
  them, and they are kept again only once tracking is on again.
* **The progress a reader sees is fenced.** The progress poller (`PolledProgress`) calls
  `fence()` after it read the read models' progress and before it publishes it: a PING on the
  tracking connection, answered after every invalidation Redis pushed before it. Tombstones
  are written before a projector records the position they cover (`cache_position_of`), so
  once this process shows a position (or cache position) P, every tombstone up to P has
  reached its local copies: an erased user's row, say, is served by no worker whose progress
  shows the erasure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import redis
from redis._parsers import _RESP3Parser

from eventkeep.projections.readmodel import Change
from eventkeep.projections.redis_cache import RedisCache

log = logging.getLogger(__name__)

# Local copies, oldest dropped first: R1's 10,000 rows with room to spare, ~20-40 MB.
CAPACITY = 50_000
# Keys invalidated lately, remembered for the GETs in flight when it happened.
RECENT = 8_192
# A local copy is served only this long after the last fence answered (the poller fences at
# least every 0.1 s while Redis answers). A fence waits twice the Redis timeout at most.
FRESH_SECONDS = 1.0
RECONNECT_SECONDS = 0.5
MAX_RECONNECT_SECONDS = 5.0


class NearCache:
    """The `Cache` of an API process in the distributed mode: `RedisCache` behind a local map."""

    def __init__(self, redis_cache: RedisCache, url: str, timeout: float) -> None:
        self.redis = redis_cache
        self._prefix = redis_cache.key_prefix
        self._local: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._sequence = 0  # invalidations seen
        self._floor = 0  # GETs started before this sequence may not keep their answer
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._tracking = False
        self._fenced_at = float("-inf")
        self._fences_asked = self._fences_answered = 0
        self._fenced = threading.Condition(self._lock)
        self._fence_timeout = 2 * timeout
        self._pool = redis.ConnectionPool.from_url(
            url,
            protocol=3,
            parser_class=_RESP3Parser,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="near-cache", daemon=True)
        self._thread.start()

    # --- the Cache protocol ------------------------------------------------------------------

    async def get_async(self, kind: str, row_id: str, generation: int) -> bytes | None:
        key = self.redis.key(generation, kind, row_id)
        body = self._local.get(key)
        if body is not None and time.monotonic() - self._fenced_at < FRESH_SECONDS:
            return body
        asked_at = self._sequence
        body = await self.redis.get_async(kind, row_id, generation)
        if body is not None:
            self._keep(key, body, asked_at)
        return body

    def fill(self, kind: str, row_id: str, version: int, body: bytes, generation: int) -> None:
        # Not kept here: the fill's own SET comes back as an invalidation; the next GET keeps it.
        self.redis.fill(kind, row_id, version, body, generation)

    def settled(self) -> bool:
        return self.redis.settled()

    def publish(self, changes: Iterable[Change]) -> None:
        self.redis.publish(changes)

    async def warm_async(self, connections: int) -> None:
        await self.redis.warm_async(connections)

    # --- coherence ---------------------------------------------------------------------------

    def fence(self) -> bool:
        """Waits until every invalidation Redis pushed before now has reached the local copies
        (a PING on the tracking connection, answered after them). False, with the copies
        dropped, when the connection does not answer in time."""
        with self._lock:
            if not self._tracking:
                return False
            self._fences_asked += 1
            ticket = self._fences_asked
        asked = time.monotonic()
        os.write(self._wake_write, b"f")
        with self._fenced:
            answered = self._fenced.wait_for(
                lambda: self._fences_answered >= ticket or not self._tracking,
                self._fence_timeout,
            )
            if answered and self._tracking:
                self._fenced_at = max(self._fenced_at, asked)
                return True
            self._lose_locked()
            return False

    def close(self) -> None:
        self._stopping.set()
        os.write(self._wake_write, b"s")
        self._thread.join(5)
        self._pool.disconnect()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def __len__(self) -> int:
        return len(self._local)

    def near(self, kind: str, row_id: str, generation: int) -> bytes | None:
        """The copy this process holds of an entry, if any (what an operator or test asks)."""
        return self._local.get(self.redis.key(generation, kind, row_id))

    def _keep(self, key: str, body: bytes, asked_at: int) -> None:
        with self._lock:
            if not self._tracking or asked_at < self._floor:
                return
            if self._recent.get(key, -1) > asked_at:
                return  # invalidated while the GET was in flight
            self._local[key] = body
            while len(self._local) > CAPACITY:
                del self._local[next(iter(self._local))]

    def _invalidated(self, push: list[Any]) -> None:
        """`["invalidate", [key, ...]]`, or `["invalidate", None]` for a flush."""
        keys = push[1]
        with self._lock:
            self._sequence += 1
            if keys is None:
                self._drop_all_locked()
                return
            for raw in keys:
                key = raw.decode() if isinstance(raw, bytes) else raw
                self._local.pop(key, None)
                self._recent[key] = self._sequence
                self._recent.move_to_end(key)
            while len(self._recent) > RECENT:
                _, forgotten = self._recent.popitem(last=False)
                self._floor = max(self._floor, forgotten + 1)

    def _drop_all_locked(self) -> None:
        self._local.clear()
        self._recent.clear()
        self._floor = self._sequence = self._sequence + 1

    def _lose_locked(self) -> None:
        self._tracking = False
        self._fenced_at = float("-inf")
        self._drop_all_locked()
        self._fenced.notify_all()

    # --- the tracking connection's thread ----------------------------------------------------

    def _listen(self) -> None:
        wait = RECONNECT_SECONDS
        while not self._stopping.is_set():
            connection = self._pool.make_connection()
            try:
                self._track(connection)
            except (redis.RedisError, OSError) as error:
                if not self._stopping.is_set() and wait == RECONNECT_SECONDS:
                    log.warning("near cache off until Redis answers again: %s", error)
            finally:
                with self._lock:
                    tracked = self._tracking
                    self._lose_locked()
                with contextlib.suppress(Exception):
                    connection.disconnect()
            # Backing off while Redis stays away (each attempt may cost a TLS handshake).
            wait = RECONNECT_SECONDS if tracked else min(wait * 2, MAX_RECONNECT_SECONDS)
            self._stopping.wait(wait)

    def _track(self, connection: Any) -> None:
        connection.connect()
        connection._parser.set_invalidation_push_handler(self._invalidated)
        connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
        if connection.read_response() not in (b"OK", "OK"):
            raise redis.RedisError("CLIENT TRACKING was refused")
        with self._lock:
            self._drop_all_locked()  # nothing kept from before tracking was on
            self._tracking = True
        while not self._stopping.is_set():
            if not connection.can_read(0):
                ready, _, _ = select.select([connection._sock, self._wake_read], [], [], 1.0)
                if self._wake_read in ready:
                    os.read(self._wake_read, 4096)
            with self._lock:
                asked = self._fences_asked
            if asked > self._fences_answered:
                connection.send_command("PING")
                # Pushes before the PONG go to `_invalidated` on the way.
                connection.read_response()
                with self._fenced:
                    self._fences_answered = asked
                    self._fenced.notify_all()
            elif connection.can_read(0):
                connection.read_response(push_request=True)
