"""The distributed mode's cache: Redis, shared by every API process and projector.

Entries are `"<version>|<encoded answer>"` (`ReadModel.answer`), tombstones `"<version>|"`;
the rule of `projections/cache.py` (`accepts`) runs as one Lua script, for a query's fill and
for the projector's answers and tombstones alike, so that compare-and-set is atomic in Redis.
Redis down or slow: a get is a miss (the query goes to the read model), a fill is dropped,
and the projector's changes wait (the newest of each row) and are written when Redis answers
again; past `PENDING_ANSWERS` rows waiting, the others wait as tombstones, which keeps the
projector's memory bounded through a long outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Any, ClassVar

import redis
import redis.asyncio
from redis.asyncio.connection import RedisSSLContext

from eventkeep.projections.cache import accepts
from eventkeep.projections.readmodel import Change

log = logging.getLogger(__name__)

TTL_SECONDS = 3600

# Rows whose answers wait for Redis (beyond: as tombstones, the answers dropped).
PENDING_ANSWERS = 50_000

# KEYS[1] entry; ARGV[1] version, ARGV[2] value ("<version>|<answer>" or a tombstone,
# "<version>|"), ARGV[3] ttl. Mirrors cache.accepts.
_OFFER = """
local current = redis.call('GET', KEYS[1])
if current then
  local bar = string.find(current, '|', 1, true)
  local version = tonumber(string.sub(current, 1, bar - 1))
  local offered = tonumber(ARGV[1])
  if offered < version then return 0 end
  if offered == version then
    local is_row = bar < string.len(current)
    local offered_row = string.len(ARGV[2]) > string.len(ARGV[1]) + 1
    if is_row or not offered_row then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class _SharedContextConnection(redis.asyncio.SSLConnection):
    """A TLS connection whose `ssl.SSLContext` is built once per process and settings, not
    once per connection: building one reads the system's CA bundle, 40-250 ms of CPU on the
    event loop here, so each new connection stalled every request of its worker."""

    _shared: ClassVar[dict[tuple[Any, ...], RedisSSLContext]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        made = self.ssl_context
        settings = (
            *(made.keyfile, made.certfile, made.cert_reqs, made.ca_certs, made.ca_data),
            *(made.ca_path, made.check_hostname, made.min_version, made.ciphers),
        )
        with self._lock:
            self.ssl_context = self._shared.setdefault(settings, made)


class RedisCache:
    def __init__(self, url: str, *, namespace: str = "eventkeep:rm", timeout: float = 0.2) -> None:
        self._url = url
        self._timeout = timeout  # connect and each request (EVENTKEEP_REDIS_TIMEOUT)
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, redis.asyncio.Redis
        ] = weakref.WeakKeyDictionary()
        self._offer = self._redis.register_script(_OFFER)
        self._namespace = namespace
        # Changes waiting for Redis: the newest version of each row, with its answer (or None).
        self._pending: dict[tuple[int, str, str], tuple[int, bytes | None]] = {}
        self._lock = threading.Lock()

    @property
    def key_prefix(self) -> str:
        """What every entry's key starts with."""
        return f"{self._namespace}:"

    def key(self, generation: int, kind: str, row_id: str) -> str:
        return f"{self._namespace}:{generation}:{kind}:{row_id}"

    async def get_async(self, kind: str, row_id: str, generation: int) -> bytes | None:
        # One asyncio client per event loop: its connections belong to the loop they met.
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = redis.asyncio.Redis.from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
            )
            pool = client.connection_pool
            if pool.connection_class is redis.asyncio.SSLConnection:
                pool.connection_class = _SharedContextConnection
        try:
            return _body(await client.get(self.key(generation, kind, row_id)))
        except redis.RedisError:
            return None

    async def warm_async(self, connections: int) -> None:
        """Opens `connections` connections of this event loop's client, and as many of the
        blocking client's (the fills'), before requests need them: a TLS connection costs a
        handshake, and a blocking one a CA bundle read besides. Redis down: nothing opened."""
        await asyncio.gather(
            *(self.get_async("warm", "", 0) for _ in range(connections)),
            asyncio.to_thread(self._open_blocking, connections),
        )

    def _open_blocking(self, connections: int) -> None:
        pool = self._redis.connection_pool
        opened = []
        with contextlib.suppress(redis.RedisError):
            for _ in range(connections):
                connection = pool.get_connection()
                opened.append(connection)
                connection.connect()
        for connection in opened:
            pool.release(connection)

    def fill(self, kind: str, row_id: str, version: int, body: bytes, generation: int) -> None:
        value = str(version).encode() + b"|" + body
        with contextlib.suppress(redis.RedisError):  # the next miss reads the read model again
            self._offer(
                keys=[self.key(generation, kind, row_id)],
                args=[version, value, TTL_SECONDS],
            )

    def settled(self) -> bool:
        with self._lock:
            return not self._pending

    def publish(self, changes: Iterable[Change]) -> None:
        """Writes the changes' answers and tombstones, with any a Redis outage left pending;
        keeps what fails (the newest change of each row)."""
        with self._lock:
            pending = self._pending
            for change in changes:
                key = (change.generation, change.kind, change.id)
                waiting = pending.get(key)
                if waiting is None or accepts(
                    waiting[0], waiting[1] is not None, change.version, change.answer is not None
                ):
                    pending[key] = (change.version, change.answer)
            if not pending:
                return
            try:
                try:
                    self._write_pending()
                except redis.exceptions.NoScriptError:  # Redis restarted, or its scripts flushed
                    self._redis.script_load(_OFFER)
                    self._write_pending()
            except redis.RedisError as error:
                log.warning("%s cache changes wait for Redis: %s", len(pending), error)
                if len(pending) > PENDING_ANSWERS:  # a tombstone is as safe, and small
                    for key, (version, _) in pending.items():
                        pending[key] = (version, None)
                return
            pending.clear()

    def _write_pending(self) -> None:
        """One round trip: the script by its digest (a script object given a pipeline asks
        Redis first whether it has the script, a round trip more per batch)."""
        sha = self._offer.sha
        with self._redis.pipeline(transaction=False) as pipe:
            for key, (version, answer) in self._pending.items():
                value = b"%d|%s" % (version, answer or b"")
                pipe.evalsha(sha, 1, self.key(*key), version, value, TTL_SECONDS)
            pipe.execute()


def _body(value: bytes | str | None) -> bytes | None:
    """The encoded answer of an entry; None for no entry or a tombstone."""
    if not value:
        return None
    if isinstance(value, str):  # a client made to decode answers
        value = value.encode()
    _, _, body = value.partition(b"|")
    return body or None
