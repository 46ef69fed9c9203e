"""PostgreSQL and Redis started by infra/services: reachable at the exported URLs, as configured."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis

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
