"""The cache rule, for the in-process cache and for Redis: a row read before the projector
committed a newer version cannot be put back over that version's tombstone; entries of one
table generation are never served for another; Redis down is a miss, not an error."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import orjson
import pytest

from eventkeep.projections.cache import Cache, LocalCache
from eventkeep.projections.readmodel import Change, encode
from eventkeep.projections.redis_cache import RedisCache
from tests.faults.tcp_proxy import TcpProxy


@pytest.fixture(params=["local", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "local":
        yield LocalCache()
        return
    # Each `get` runs in a new event loop, so a new TLS connection: on a loaded machine that
    # can take longer than the production 0.2 s, and a timed-out read is a miss by design.
    # The rule under test is the cache's, not its timeout.
    yield RedisCache(
        request.getfixturevalue("redis_url"), namespace=f"t{uuid.uuid4().hex}", timeout=5.0
    )


def row(version: int, price: str = "1.00") -> dict:
    return {"id": "p1", "version": version, "price": price}


def offer(cache: Cache, row: dict, generation: int = 0) -> None:
    """A query's fill: the row it read, encoded as the answer it sends."""
    cache.fill("product", row["id"], row["version"], encode(row), generation)


def get(cache: Cache, generation: int = 0) -> dict | None:
    """The cached answer, decoded (entries hold the encoded bytes a hit sends)."""
    body = asyncio.run(cache.get_async("product", "p1", generation))
    return None if body is None else orjson.loads(body)


def test_a_stale_fill_cannot_replace_a_newer_tombstone(cache: Cache) -> None:
    offer(cache, row(5), 0)
    assert get(cache) == row(5)
    cache.publish([Change("product", "p1", 6, 0)])  # the projector committed version 6
    assert get(cache) is None
    offer(cache, row(5), 0)  # a query that read version 5 just before the commit
    assert get(cache) is None
    offer(cache, row(6, "2.00"), 0)
    assert get(cache) == row(6, "2.00")
    cache.publish([Change("product", "p1", 6, 0)])  # late tombstone of what it already holds
    assert get(cache) == row(6, "2.00")


def test_generations_are_kept_apart(cache: Cache) -> None:
    offer(cache, row(3), 1)
    assert get(cache, 1) == row(3)
    assert get(cache, 2) is None


def test_redis_down_is_a_miss_and_tombstones_wait() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0")  # nothing listens there
    offer(cache, row(1), 0)
    cache.publish([Change("product", "p1", 2, 0)])
    assert get(cache) is None


def test_an_api_worker_opens_its_cache_connections_before_requests_on_one_tls_context(
    redis_url: str,
) -> None:
    """Each new TLS connection to Redis built its own `SSLContext` (a CA bundle read, 40-250 ms
    of CPU on the event loop), so the first requests of a worker stalled together. A served
    worker opens them at startup (`warm_async`), and its connections share one context."""
    assert redis_url.startswith("rediss://"), "the services run Redis with TLS, as CI does"
    cache = RedisCache(redis_url, namespace=f"t{uuid.uuid4().hex}", timeout=5.0)

    async def warmed() -> set[int]:
        await cache.warm_async(4)
        pool = cache._async_clients[asyncio.get_running_loop()].connection_pool
        opened = [c for c in pool._available_connections if c.is_connected]  # type: ignore[attr-defined]
        blocking = cache._redis.connection_pool._available_connections  # type: ignore[attr-defined]
        assert (len(opened), len(blocking)) == (4, 4)
        assert all(c._sock is not None for c in blocking)  # connected, not merely made
        return {id(c.ssl_context.get()) for c in opened}

    assert len(asyncio.run(warmed())) == 1


def test_tombstones_are_written_after_redis_forgot_its_scripts(redis_url: str) -> None:
    """The tombstones' script is sent by its digest (no question first whether Redis holds
    it): after a restart or `SCRIPT FLUSH` it is loaded again and the tombstones written."""
    cache = RedisCache(redis_url, namespace=f"t{uuid.uuid4().hex}", timeout=5.0)
    offer(cache, row(5), 0)
    cache._redis.script_flush()
    cache.publish([Change("product", "p1", 6, 0)])
    assert cache.settled()
    assert get(cache) is None
    offer(cache, row(5), 0)  # the tombstone holds: version 5 is older
    assert get(cache) is None


def answered(version: int, price: str = "1.00") -> Change:
    """The projector's change after its commit: the row's answer at `version`."""
    return Change("product", "p1", version, 0, encode(row(version, price)))


def test_the_projectors_answer_is_a_hit_and_replaces_an_older_entry(cache: Cache) -> None:
    cache.publish([answered(1)])
    assert get(cache) == row(1)  # no fill needed: the next read is a hit
    offer(cache, row(1), 0)
    cache.publish([answered(2, "2.00")])
    assert get(cache) == row(2, "2.00")


def test_an_older_answer_never_replaces_a_newer_one(cache: Cache) -> None:
    """Out of order (a former partition owner's late batch, a write retried after an
    outage): version 5 arrives after 6 and is dropped, as is a stale fill."""
    cache.publish([answered(6, "6.00")])
    cache.publish([answered(5, "5.00")])
    assert get(cache) == row(6, "6.00")
    offer(cache, row(5, "5.00"), 0)
    assert get(cache) == row(6, "6.00")
    cache.publish([Change("product", "p1", 6, 0)])  # a tombstone of the version it holds
    assert get(cache) == row(6, "6.00")
    cache.publish([Change("product", "p1", 7, 0), answered(5)])  # newer tombstone wins
    assert get(cache) is None
    cache.publish([answered(7, "7.00")])  # the answer of the tombstone's own version
    assert get(cache) == row(7, "7.00")


def test_answers_that_waited_for_redis_are_written_newest_first(redis_url: str) -> None:
    """Changes kept through an outage keep the newest of each row: once Redis answers, an
    older answer handed over after it does not win, and the next read is the newer one."""
    proxy = TcpProxy.to(redis_url)
    try:
        cache = RedisCache(proxy.url(redis_url), namespace=f"t{uuid.uuid4().hex}", timeout=1.0)
        with proxy.down():
            cache.publish([answered(3, "3.00")])
            cache.publish([answered(2, "2.00")])
            assert not cache.settled()
        cache.publish([])  # the projector's next hand-over, even an empty one
        assert cache.settled()
        assert get(cache) == row(3, "3.00")
    finally:
        proxy.close()
