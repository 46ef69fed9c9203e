"""An API process's near cache (projections/near_cache.py), on the real Redis over TLS: it
answers from the process what Redis answered, and once it is fenced (as the progress poller
fences before it publishes a position) no copy older than Redis's entry is served — whoever
changed the entry (a projector's tombstone, another worker's fill, a flush); a Redis that
falls silent stops the copies being served within a bound, and they come back with it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from eventkeep.projections.near_cache import NearCache
from eventkeep.projections.readmodel import Change
from eventkeep.projections.redis_cache import RedisCache
from tests.faults.tcp_proxy import TcpProxy

TIMEOUT = 5.0  # s, Redis's: TLS handshakes on a loaded machine (the rule is under test)


def poll(condition: Callable[[], Any], what: str, deadline: float = 30) -> Any:
    until = time.monotonic() + deadline
    while not (found := condition()):
        assert time.monotonic() < until, f"gave up waiting for {what}"
        time.sleep(0.02)
    return found


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex}"


@pytest.fixture
def projector(redis_url: str, namespace: str) -> RedisCache:
    """Another process's view of the same entries: the projector's tombstones, the other
    workers' fills."""
    return RedisCache(redis_url, namespace=namespace, timeout=TIMEOUT)


def near_cache(url: str, namespace: str, timeout: float = TIMEOUT) -> NearCache:
    near = NearCache(RedisCache(url, namespace=namespace, timeout=timeout), url, timeout=timeout)
    poll(near.fence, "the tracking connection")
    return near


@pytest.fixture
def near(redis_url: str, namespace: str) -> Iterator[NearCache]:
    cache = near_cache(redis_url, namespace)
    yield cache
    cache.close()


def get(cache: NearCache, row_id: str = "p1") -> bytes | None:
    return asyncio.run(cache.get_async("product", row_id, 0))


def kept(cache: NearCache, projector: RedisCache, body: bytes, version: int = 1) -> None:
    """`body` in Redis and, after a read, kept near."""
    projector.fill("product", "p1", version, body, 0)
    poll(lambda: get(cache) == body and len(cache) == 1, "the copy kept near")


def test_a_hit_is_answered_from_the_process(near: NearCache, projector: RedisCache) -> None:
    projector.fill("product", "p1", 1, b'{"v":1}', 0)
    poll(lambda: get(near) == b'{"v":1}' and len(near) == 1, "the copy kept near")
    near.fence()
    with redis.Redis.from_url(projector._url) as direct:
        direct.client_pause(2000, all=True)  # Redis answers nobody for 2 s
        started = time.monotonic()
        assert get(near) == b'{"v":1}'
        assert time.monotonic() - started < 1.5  # not a round trip to the paused Redis


def test_a_tombstone_written_elsewhere_is_seen_once_fenced(
    near: NearCache, projector: RedisCache
) -> None:
    kept(near, projector, b'{"v":1}')
    projector.publish([Change("product", "p1", 2, 0)])  # the projector committed version 2
    assert near.fence()
    assert get(near) is None  # no copy of version 1, at once
    projector.fill("product", "p1", 2, b'{"v":2}', 0)  # another worker read version 2
    assert near.fence()
    assert get(near) == b'{"v":2}'


def test_a_flush_drops_every_copy(near: NearCache, projector: RedisCache) -> None:
    kept(near, projector, b'{"v":1}')
    redis.Redis.from_url(projector._url).flushdb()
    assert near.fence()
    assert len(near) == 0
    assert get(near) is None


def test_a_silent_redis_stops_the_copies_and_they_come_back(
    redis_url: str, namespace: str, projector: RedisCache
) -> None:
    proxy = TcpProxy.to(redis_url)
    near = near_cache(proxy.url(redis_url), namespace, timeout=0.5)
    try:
        kept(near, projector, b'{"v":1}')
        assert near.fence()
        proxy.freeze()  # the network to Redis falls silent: no invalidation can arrive
        projector.publish([Change("product", "p1", 2, 0)])
        assert not near.fence()  # unanswered: the copies are dropped
        assert get(near) is None  # and Redis, unreachable, is a miss
        proxy.thaw()
        poll(near.fence, "the tracking connection again")
        projector.fill("product", "p1", 2, b'{"v":2}', 0)
        poll(lambda: get(near) == b'{"v":2}', "Redis's entry again")
    finally:
        near.close()
        proxy.close()


def test_no_copy_is_served_long_after_the_last_fence(
    redis_url: str, namespace: str, projector: RedisCache
) -> None:
    """A push lost without the connection noticing (a silent network): the copy it would
    have dropped is served at most `FRESH_SECONDS` after the last fence that answered."""
    proxy = TcpProxy.to(redis_url)
    near = near_cache(proxy.url(redis_url), namespace, timeout=0.5)
    try:
        kept(near, projector, b'{"v":1}')
        assert near.fence()
        proxy.freeze()
        projector.publish([Change("product", "p1", 2, 0)])
        time.sleep(1.5)  # past FRESH_SECONDS (1 s)
        assert get(near) is None  # not the copy; Redis, unreachable, is a miss
    finally:
        near.close()
        proxy.close()
