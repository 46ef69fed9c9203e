"""Connection settings of the real stores under test (fails, never skips, when missing)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests.conftest_services import POSTGRES_URL, require_env

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


def postgres_env() -> dict[str, str]:
    """The library's persistence settings for the test database."""
    params = postgres_params()
    return {
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
