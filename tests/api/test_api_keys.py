"""The API key store, the same tests for SQLite (embedded) and PostgreSQL (distributed)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from eventkeep.api.keys import (
    ApiKeyStore,
    PostgresApiKeyStore,
    Role,
    SqliteApiKeyStore,
)
from tests.eventstore.stores import postgres_url


def drop_postgres_keys() -> None:
    with psycopg.connect(postgres_url(), autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS api_keys")


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)],
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiKeyStore]:
    if request.param == "sqlite":
        made: ApiKeyStore = SqliteApiKeyStore(tmp_path / "keys.db", cache_seconds=60)
    else:
        drop_postgres_keys()
        made = PostgresApiKeyStore(postgres_url(), cache_seconds=60)
    yield made
    made.close()
    if request.param == "postgres":
        drop_postgres_keys()


def test_a_created_key_verifies_with_its_role(store: ApiKeyStore) -> None:
    issued = store.create(Role.auditor, "audit team")
    assert issued.secret_key.startswith(f"ek_{issued.key.id}_")
    assert store.verify(issued.secret_key) == issued.key
    assert (issued.key.role, issued.key.name, issued.key.revoked) == (
        Role.auditor,
        "audit team",
        False,
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),  # wrong secret
        lambda key: "ek_ffffffffffffffff_" + key.split("_", 2)[2],  # unknown id
        lambda key: key + "x",  # malformed
        lambda key: "",
    ],
)
def test_a_wrong_key_does_not_verify(store: ApiKeyStore, mangle: object) -> None:
    issued = store.create(Role.client)
    assert store.verify(mangle(issued.secret_key)) is None  # type: ignore[operator]


def test_only_the_hash_of_the_secret_is_stored(store: ApiKeyStore, tmp_path: Path) -> None:
    issued = store.create(Role.admin)
    secret = issued.secret_key.split("_", 2)[2]
    if isinstance(store, SqliteApiKeyStore):
        with sqlite3.connect(tmp_path / "keys.db") as connection:
            rows = connection.execute("SELECT * FROM api_keys").fetchall()
    else:
        with psycopg.connect(postgres_url()) as connection:
            rows = connection.execute("SELECT * FROM api_keys").fetchall()
    assert secret not in repr(rows)


def test_revoking_a_key_refuses_it_at_once_in_this_process(store: ApiKeyStore) -> None:
    issued = store.create(Role.client)
    assert store.verify(issued.secret_key) is not None  # now cached
    assert store.revoke(issued.key.id) is True
    assert store.verify(issued.secret_key) is None
    assert store.revoke(issued.key.id) is False
    assert [key.revoked for key in store.list()] == [True]


def test_rotating_a_named_key_revokes_the_earlier_ones(store: ApiKeyStore) -> None:
    other = store.create(Role.admin, "ops")
    first = store.rotate(Role.admin, "bootstrap")
    second = store.rotate(Role.admin, "bootstrap")
    assert store.verify(first.secret_key) is None
    assert store.verify(second.secret_key) == second.key
    assert store.verify(other.secret_key) == other.key
    assert [(key.id, key.revoked) for key in store.list()] == [
        (other.key.id, False),
        (first.key.id, True),
        (second.key.id, False),
    ]


def test_verified_keys_are_cached_for_their_ttl(tmp_path: Path) -> None:
    """Another process revoking a key is seen when the cache entry expires."""
    path = tmp_path / "keys.db"
    api_process = SqliteApiKeyStore(path, cache_seconds=0.3)
    cli_process = SqliteApiKeyStore(path)
    issued = cli_process.create(Role.client)
    assert api_process.verify(issued.secret_key) is not None

    cli_process.revoke(issued.key.id)
    assert api_process.verify(issued.secret_key) is not None  # still trusted from the cache

    time.sleep(0.4)
    assert api_process.verify(issued.secret_key) is None
