"""The distributed mode's cache: Redis, shared by every API process and projector.

Entries are `"<version>|<encoded answer>"` (`readmodel.encode`), tombstones `"<version>|"`;
both rules of `projections/cache.py` run as Lua scripts so that compare-and-set is atomic in
Redis. Redis down or slow: a get is a miss (the query goes to the read model), a fill is
dropped, and the projector's tombstones wait and are written when Redis answers again.
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

from eventkeep.projections.readmodel import Change

log = logging.getLogger(__name__)

TTL_SECONDS = 3600

# KEYS[1] entry; ARGV[1] version, ARGV[2] value, ARGV[3] ttl. Mirrors cache.accepts_fill.
_FILL = """
local current = redis.call('GET', KEYS[1])
if current then
  local bar = string.find(current, '|', 1, true)
  local version = tonumber(string.sub(current, 1, bar - 1))
  local is_row = bar < string.len(current)
  local offered = tonumber(ARGV[1])
  if offered < version or (offered == version and is_row) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS[1] entry; ARGV[1] version, ARGV[2] ttl: a tombstone unless the entry is as new.
_FORGET = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.sub(current, 1, string.find(current, '|', 1, true) - 1))
  if version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|', 'EX', ARGV[2])
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
        self._fill = self._redis.register_script(_FILL)
        self._forget = self._redis.register_script(_FORGET)
        self._namespace = namespace
        self._pending: dict[tuple[int, str, str], int] = {}
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
            self._fill(
                keys=[self.key(generation, kind, row_id)],
                args=[version, value, TTL_SECONDS],
            )

    def settled(self) -> bool:
        with self._lock:
            return not self._pending

    def forget(self, changes: Iterable[Change]) -> None:
        """Writes tombstones, including any a Redis outage left pending; keeps what fails."""
        with self._lock:
            for change in changes:
                key = (change.generation, change.kind, change.id)
                self._pending[key] = max(change.version, self._pending.get(key, 0))
            if not self._pending:
                return
            try:
                try:
                    self._write_tombstones()
                except redis.exceptions.NoScriptError:  # Redis restarted, or its scripts flushed
                    self._redis.script_load(_FORGET)
                    self._write_tombstones()
            except redis.RedisError as error:
                log.warning("%s cache tombstones wait for Redis: %s", len(self._pending), error)
                return
            self._pending.clear()

    def _write_tombstones(self) -> None:
        """One round trip: the script by its digest (a script object given a pipeline asks
        Redis first whether it has the script, a round trip more per batch)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for key, version in self._pending.items():
                pipe.evalsha(self._forget.sha, 1, self.key(*key), version, TTL_SECONDS)
            pipe.execute()


def _body(value: bytes | str | None) -> bytes | None:
    """The encoded answer of an entry; None for no entry or a tombstone."""
    if not value:
        return None
    if isinstance(value, str):  # a client made to decode answers
        value = value.encode()
    _, _, body = value.partition(b"|")
    return body or None
