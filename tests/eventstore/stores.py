"""Connection settings of the real stores under test (fails, never skips, when missing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import psycopg
from eventsourcing.postgres import PostgresDatastore
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest_services import POSTGRES_URL, require_env

if TYPE_CHECKING:
    from eventkeep.eventstore.postgres import PostgresApplicationRecorder

OUR_TABLES = (
    "stored_events",
    "stored_events_claims",
    "stored_events_idempotency",
    "stored_events_data_keys",
    "notification_tracking",
    "eventkeep_events",
    "eventkeep_events_claims",
    "eventkeep_events_idempotency",
    "eventkeep_events_data_keys",
    "eventkeep_tracking",
)


def postgres_url() -> str:
    return require_env(POSTGRES_URL)


def postgres_params() -> dict[str, Any]:
    params = conninfo_to_dict(postgres_url())
    return {
        "dbname": params["dbname"],
        "host": params.get("host", "127.0.0.1"),
        "port": params.get("port", "5432"),
        "user": params.get("user", "postgres"),
        "password": params.get("password", ""),
    }


# The URL's parameters the library's datastore passes on itself; the rest (TLS) are options.
_LIBRARY_PARAMETERS = {"dbname", "host", "port", "user", "password", "connect_timeout"}


def postgres_options() -> dict[str, Any]:
    """The URL's other parameters: sslmode, sslrootcert… (TLS under infra/services)."""
    params = conninfo_to_dict(postgres_url())
    return {k: v for k, v in params.items() if k not in _LIBRARY_PARAMETERS}


def postgres_datastore(**kwargs: Any) -> PostgresDatastore:
    """The library's datastore on the test database, with the URL's TLS settings."""
    datastore = PostgresDatastore(**postgres_params(), **kwargs)
    cast(dict[str, Any], datastore.pool.kwargs).update(postgres_options())
    return datastore


def postgres_env() -> dict[str, str]:
    """The library's persistence settings for the test database."""
    params = postgres_params()
    options = postgres_options()
    tls = {"POSTGRES_CONNINFO": make_conninfo(**options)} if options else {}
    return tls | {
        "PERSISTENCE_MODULE": "eventkeep.eventstore.postgres",
        "POSTGRES_DBNAME": params["dbname"],
        "POSTGRES_HOST": params["host"],
        "POSTGRES_PORT": str(params["port"]),
        "POSTGRES_USER": params["user"],
        "POSTGRES_PASSWORD": params["password"],
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "12",
    }


def drop_postgres_tables(*names: str) -> None:
    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        for name in names or OUR_TABLES:
            conn.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')


@contextlib.contextmanager
def postgres_log(table: str) -> Iterator[PostgresApplicationRecorder]:
    """A fresh event log in `table` (and its side tables) of the shared database, dropped after."""
    from eventkeep.eventstore.postgres import PostgresApplicationRecorder

    tables = (table, f"{table}_claims", f"{table}_idempotency", f"{table}_data_keys")
    drop_postgres_tables(*tables)
    datastore = postgres_datastore(pool_size=4, max_overflow=8)
    recorder = PostgresApplicationRecorder(datastore, events_table_name=table)
    recorder.create_table()
    try:
        yield recorder
    finally:
        recorder.close()
        datastore.close()
        drop_postgres_tables(*tables)
