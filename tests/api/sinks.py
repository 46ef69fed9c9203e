"""Where copies of personal data could be: each sink read whole, as bytes, for a search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import redis

from eventkeep.settings import Settings
from tests.conftest_services import POSTGRES_URL, REDIS_URL, require_env
from tests.projections.test_kafka_pipeline import every_record


def flatten(value: Any) -> bytes:
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()


def postgres_rows() -> bytes:
    """Every row of every table of the schema: the event store's, the read models', the keys'.
    Bytes columns as their raw bytes (as text, PostgreSQL shows them in hex)."""
    with psycopg.connect(require_env(POSTGRES_URL)) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        rows = [
            b"|".join(flatten(value) for value in row)
            for (table,) in tables
            for row in connection.execute(f'SELECT * FROM "{table}"')
        ]
    return b"\n".join(rows)


def redis_values() -> bytes:
    """Every key and value of the test Redis, read per type (`DUMP` would compress)."""
    client = redis.Redis.from_url(require_env(REDIS_URL))
    found = b""
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                value: Any = client.get(key)
            elif kind == b"hash":
                value = client.hgetall(key)
            elif kind == b"list":
                value = client.lrange(key, 0, -1)
            elif kind == b"set":
                value = client.smembers(key)
            elif kind == b"zset":
                value = client.zrange(key, 0, -1)
            else:
                value = client.dump(key)
            found += key + b"=" + flatten(value) + b"\n"
    finally:
        client.close()
    return found


def kafka_messages(settings: Settings) -> bytes:
    """Every message of the test's topics, read from offset 0: keys, values, headers."""
    found = b""
    for records in every_record(settings):
        for messages in records.values():
            for message in messages:
                found += (message.key or b"") + (message.value or b"")
                found += b"".join(name.encode() + value for name, value in message.headers)
    return found


def files_under(home: Path) -> bytes:
    """Every file of the embedded home: the store's and read models' `.db`, `-wal`, `-shm`."""
    return b"".join(path.read_bytes() for path in sorted(home.rglob("*")) if path.is_file())
