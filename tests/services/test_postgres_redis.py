"""PostgreSQL and Redis started by infra/services: reachable at the exported URLs, as configured."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis

from eventkeep.api.ratelimit import RedisLimiter
from eventkeep.projections.readmodel import Change, encode
from eventkeep.projections.redis_cache import RedisCache

pytestmark = pytest.mark.services


def test_postgres_round_trip(postgres_url: str) -> None:
    value = f"eventkeep-{uuid.uuid4()}"
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TEMPORARY TABLE services_check (id serial PRIMARY KEY, value text)")
        (row_id,) = conn.execute(
            "INSERT INTO services_check (value) VALUES (%s) RETURNING id", (value,)
        ).fetchone()
        conn.commit()
        assert conn.execute(
            "SELECT value FROM services_check WHERE id = %s", (row_id,)
        ).fetchone() == (value,)


def test_postgres_is_the_configured_server(postgres_url: str) -> None:
    """The settings infra/services promises: version 15, durable commits, room for 200 clients."""
    with psycopg.connect(postgres_url) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["server_version_num", "fsync", "synchronous_commit", "max_connections"],),
            ).fetchall()
        )
        assert int(settings["server_version_num"]) // 10000 == 15
        assert settings["fsync"] == "on"
        assert settings["synchronous_commit"] == "on"
        assert int(settings["max_connections"]) >= 200
        assert conn.execute("SELECT current_database(), current_user").fetchone() == (
            "eventkeep",
            "eventkeep",
        )


def test_redis_round_trip(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"eventkeep:services-check:{uuid.uuid4()}"
    try:
        assert client.ping()
        assert client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
        assert int(client.info("server")["redis_version"].split(".")[0]) >= 7
    finally:
        client.delete(key)
        client.close()


def test_redis_evicts_only_keys_that_expire_within_a_memory_ceiling(redis_url: str) -> None:
    """infra/services caps Redis; what it may drop is a key with a TTL, never one without."""
    client = redis.Redis.from_url(redis_url)
    try:
        config = client.config_get("maxmemory*")
        assert int(config["maxmemory"]) > 0
        assert config["maxmemory-policy"] == "volatile-lru"
    finally:
        client.close()


def test_every_key_eventkeep_writes_to_redis_expires(redis_url: str) -> None:
    """What `volatile-lru` relies on: the cache's answers, fills and tombstones and the rate
    limiter's counters all carry a TTL, so under the ceiling any of them may go (a miss or a
    fresh window) and nothing Redis holds is left unevictable."""
    namespace = f"t{uuid.uuid4().hex}"
    cache = RedisCache(redis_url, namespace=namespace, timeout=5.0)
    cache.fill("product", "filled", 1, encode({"id": "filled", "version": 1}), 0)
    cache.publish([Change("product", "tombstoned", 2, 0)])
    cache.publish([Change("product", "answered", 3, 0, encode({"id": "answered", "version": 3}))])
    key_id = f"ttl-check-{uuid.uuid4().hex}"
    assert RedisLimiter(redis_url, 1 / 60, 2).acquire(key_id) is None
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [*client.scan_iter(f"{namespace}:*"), f"eventkeep:rate:{key_id}".encode()]
        assert len(keys) == 4, keys
        assert all(client.ttl(key) > 0 for key in keys), {key: client.ttl(key) for key in keys}
    finally:
        client.delete(*keys)
        client.close()
