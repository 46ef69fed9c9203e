"""Request rate limits per API key (GCRA: a steady rate with a burst allowance).

Distributed mode keeps the limit in Redis so every API process shares it; when Redis does not
answer, each process falls back to its own in-process limiter rather than refusing or
letting everything through. The embedded mode uses the in-process limiter alone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import redis

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    # False when `acquire` may wait on the network: the API then calls it off the event loop.
    in_memory: bool

    def acquire(self, key_id: str) -> float | None:
        """None when the request may go ahead, else the seconds until it may."""
        ...


class Unlimited:
    in_memory = True

    def acquire(self, key_id: str) -> float | None:
        return None


class LocalLimiter:
    """GCRA in memory: each key has a theoretical arrival time `tat`; a request is allowed
    while `tat` is at most `burst` intervals ahead of now."""

    in_memory = True

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1 / rate
        self._tolerance = self._interval * burst
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str) -> float | None:
        now = time.monotonic()
        with self._lock:
            tat = max(self._tat.get(key_id, now), now)
            wait = tat + self._interval - now - self._tolerance
            if wait > 0:
                return wait
            self._tat[key_id] = tat + self._interval
            return None


# The same rule in Redis, atomically; times in microseconds from the server's clock.
_GCRA = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - now - tolerance
if wait > 0 then return wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1)
return 0
"""


class RedisLimiter:
    in_memory = False

    def __init__(self, url: str, rate: float, burst: int) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
        self._script = self._redis.register_script(_GCRA)
        self._interval_us = round(1_000_000 / rate)
        self._tolerance_us = self._interval_us * burst
        self._fallback = LocalLimiter(rate, burst)
        self._redis_down = False

    def acquire(self, key_id: str) -> float | None:
        try:
            wait_us = int(
                self._script(
                    keys=[f"eventkeep:rate:{key_id}"],
                    args=[self._interval_us, self._tolerance_us],
                )
            )
        except redis.RedisError as error:
            if not self._redis_down:
                log.warning("rate limits fall back to this process: Redis: %s", error)
                self._redis_down = True
            return self._fallback.acquire(key_id)
        self._redis_down = False
        return wait_us / 1_000_000 if wait_us > 0 else None


def build_limiter(rate: float, burst: int, redis_url: str | None) -> RateLimiter:
    if rate <= 0:
        return Unlimited()
    if redis_url is None:
        return LocalLimiter(rate, burst)
    return RedisLimiter(redis_url, rate, burst)
