"""The key store's table is versioned like the event store's: a table made before versioning
is adopted as version 1 with its keys; a newer schema is refused. Both stores."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from eventkeep.api.keys import (
    KEY_STORE_SCHEMA,
    ApiKeyStore,
    PostgresApiKeyStore,
    Role,
    SqliteApiKeyStore,
)
from eventkeep.eventstore.migrations import VERSION_TABLE, SchemaTooNewError
from tests.eventstore.stores import drop_postgres_tables, postgres_url

# The table as the releases before versioning created it, with one of their keys.
LEGACY = [
    "CREATE TABLE api_keys (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL,"
    " role TEXT NOT NULL CHECK (role IN ('client', 'analyst', 'auditor', 'admin')),"
    " name TEXT NOT NULL, created_at TEXT NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE)",
]

Open = Callable[..., ApiKeyStore]


@pytest.fixture(params=["embedded", "distributed"])
def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Open, Callable]]:
    """Opens a key store over a database, and runs SQL on that database directly."""
    if request.param == "embedded":
        path = tmp_path / "api_keys.db"

        def run(sql: str) -> None:
            with closing(sqlite3.connect(path)) as connection, connection:
                connection.execute(sql)

        yield (lambda **kw: SqliteApiKeyStore(path, **kw)), run
        return

    def run_postgres(sql: str) -> None:
        with psycopg.connect(postgres_url(), autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    drop_postgres_tables("api_keys")
    yield (lambda **kw: PostgresApiKeyStore(postgres_url(), **kw)), run_postgres
    drop_postgres_tables("api_keys")


def test_a_key_table_made_before_versioning_is_adopted_with_its_keys(legacy) -> None:
    open_store, run = legacy
    for sql in LEGACY:
        run(sql)
    run(f"DROP TABLE IF EXISTS {VERSION_TABLE}")
    old = open_store(migrate=False)  # an old release's key, written through today's SQL
    issued = old.create(Role.admin, "bootstrap")
    assert old.schema_status().current == 0
    old.close()

    store = open_store()

    assert store.schema_status().current == KEY_STORE_SCHEMA.latest  # 1 adopted, the rest run
    assert store.verify(issued.secret_key) == issued.key
    store.close()


def test_a_key_table_of_a_newer_release_is_refused(legacy) -> None:
    open_store, run = legacy
    open_store().close()
    run(
        f"INSERT INTO {VERSION_TABLE} (component, version, name, applied_at)"
        " VALUES ('api_keys', 7, 'from the future', '2030-01-01T00:00:00+00:00')"
    )
    with pytest.raises(SchemaTooNewError, match="version 7"):
        open_store()
    with pytest.raises(SchemaTooNewError, match="version 7"):
        open_store(migrate=False)
