"""The API key store, the same tests for SQLite (embedded) and PostgreSQL (distributed)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)],
)
def two_processes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[float], tuple[ApiKeyStore, ApiKeyStore]]]:
    """Opens (an API process's store trusting keys `cache_seconds`, a CLI's) on one store."""
    opened: list[ApiKeyStore] = []

    def open_store(cache_seconds: float) -> ApiKeyStore:
        if request.param == "sqlite":
            made: ApiKeyStore = SqliteApiKeyStore(tmp_path / "keys.db", cache_seconds)
        else:
            made = PostgresApiKeyStore(postgres_url(), cache_seconds)
        opened.append(made)
        return made

    if request.param == "postgres":
        drop_postgres_keys()
    yield lambda cache_seconds: (open_store(cache_seconds), open_store(60))
    for made in opened:
        made.close()
    if request.param == "postgres":
        drop_postgres_keys()


def asking_threads(store: ApiKeyStore) -> list[str]:
    """The names of the threads that ask `store`'s database from now on (a spy over the real
    store's own statements)."""
    names: list[str] = []
    run = store._run

    def spied(statements: list[Any]) -> list[Any]:
        names.append(threading.current_thread().name)
        return run(statements)

    store._run = spied  # type: ignore[method-assign]
    return names


def test_a_key_in_use_is_verified_again_before_its_trust_runs_out(
    two_processes: Callable[[float], tuple[ApiKeyStore, ApiKeyStore]],
) -> None:
    """No request waits for a key's verification to be renewed: past half its trust, one
    check in the background renews it while requests keep answering from memory (every 5 s,
    each request in flight used to ask the store again through its small pool: R1's tail)."""
    api_process, cli_process = two_processes(1.0)
    issued = cli_process.create(Role.client)
    assert api_process.verify(issued.secret_key) == issued.key
    asked_by = asking_threads(api_process)
    until = time.monotonic() + 4  # four times the trust: it would have run out thrice
    while time.monotonic() < until:
        assert api_process.recently_verified(issued.secret_key) == issued.key
        assert api_process.verify(issued.secret_key) == issued.key
        time.sleep(0.01)
    assert asked_by, "the trust was never renewed"
    assert all(name.startswith("api-key-renewal") for name in asked_by), asked_by


def test_a_key_revoked_elsewhere_is_refused_within_its_trust_though_in_use(
    two_processes: Callable[[float], tuple[ApiKeyStore, ApiKeyStore]],
) -> None:
    """Renewing ahead never stretches the trust: it ends `cache_seconds` after the store last
    said the key was active, so a revocation by another process is refused within that."""
    api_process, cli_process = two_processes(1.0)
    issued = cli_process.create(Role.client)
    assert api_process.verify(issued.secret_key) is not None
    started = time.monotonic()
    while time.monotonic() < started + 1.2:  # renewed at least once
        assert api_process.recently_verified(issued.secret_key) is not None
        time.sleep(0.01)
    assert cli_process.revoke(issued.key.id)
    revoked = time.monotonic()  # every read of the store begun before this saw it active
    while time.monotonic() < revoked + 1.0:
        api_process.recently_verified(issued.secret_key)  # in use: renewals keep coming
        time.sleep(0.01)
    assert api_process.recently_verified(issued.secret_key) is None
    assert api_process.verify(issued.secret_key) is None


def test_a_revocation_here_wins_over_a_renewal_under_way(
    two_processes: Callable[[float], tuple[ApiKeyStore, ApiKeyStore]],
) -> None:
    """A renewal that read the key as active before this process revoked it stores nothing:
    a key revoked here is refused at once, whatever a background check was doing."""
    api_process, _ = two_processes(1.0)
    issued = api_process.create(Role.client)
    assert api_process.verify(issued.secret_key) is not None
    read, release = threading.Event(), threading.Event()
    run = api_process._run

    def held_after_reading(statements: list[Any]) -> list[Any]:
        rows = run(statements)
        if threading.current_thread().name.startswith("api-key-renewal"):
            read.set()
            release.wait(10)
        return rows

    api_process._run = held_after_reading  # type: ignore[method-assign]
    time.sleep(0.6)  # past half the trust: the next use renews it
    assert api_process.recently_verified(issued.secret_key) is not None
    assert read.wait(10), "no renewal began"
    assert api_process.revoke(issued.key.id)
    release.set()
    api_process.close()  # waits for the renewal to finish
    assert api_process.recently_verified(issued.secret_key) is None
