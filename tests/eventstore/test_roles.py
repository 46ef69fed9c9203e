"""Least-privilege roles (eventstore/roles.py): each process's role, connected as itself, is
refused by PostgreSQL everything outside its grant, and the owner cannot rewrite the log either.

The roles are made here with names of their own (`ek_test_*`), by `provision` as the owner of
the test database, so that the test does not depend on how infra/services named its roles.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import psycopg
import psycopg.errors
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventkeep.api.keys import KEY_STORE_SCHEMA
from eventkeep.eventstore.roles import ROLES, Login, provision, tables_of
from eventkeep.projections.readmodels import ReadModels
from tests.conftest_services import POSTGRES_URL, require_env

pytestmark = pytest.mark.services

EVENTS = "roletest_events"  # an event store of its own: other tests drop shop_events
PASSWORD = "ek-test-role-password"


def role_url(owner_url: str, role: str) -> str:
    params = conninfo_to_dict(owner_url)
    params.update(user=f"ek_test_{role}", password=PASSWORD)
    return make_conninfo(**{key: str(value) for key, value in params.items()})


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    owner = require_env(POSTGRES_URL)
    with psycopg.connect(owner, autocommit=True) as connection:
        for suffix in ("", "_claims", "_idempotency", "_data_keys"):
            connection.execute(f"DROP TABLE IF EXISTS {EVENTS}{suffix}")
        # The versions of a dropped store are forgotten by the migrations themselves.
    logins = [Login(role, f"ek_test_{role}", PASSWORD) for role in ROLES]
    provision(
        owner,
        logins,
        events_tables=(EVENTS,),
        migrate_first=(KEY_STORE_SCHEMA,),
        api_tables=tables_of(KEY_STORE_SCHEMA),
    )
    # The projector makes the read models (it owns them); provision again, as a deployment
    # does, and the query role may read them.
    with psycopg.connect(owner, autocommit=True) as connection:
        stale = connection.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'rm\\_roletest\\_%'"
        ).fetchall()
        for (table,) in stale:
            connection.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
    models = ReadModels.open(postgres_url=role_url(owner, "projector"), prefix="rm_roletest_")
    models.migrate()
    models.close()
    provision(owner, logins, events_tables=(EVENTS,))
    yield {"owner": owner, **{role: role_url(owner, role) for role in ROLES}}


def run(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def refused(url: str, sql: str, params: tuple[Any, ...] = ()) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refusal:
        run(url, sql, params)
    return str(refusal.value)


def insert_event(url: str) -> None:
    position = run(url, f"SELECT coalesce(max(position), 0) + 1 FROM {EVENTS}")[0][0]
    run(
        url,
        f"INSERT INTO {EVENTS} (position, stream_id, stream_version, stream_type, event_type,"
        " schema_version, recorded_at, data, metadata, prev_hash, hash)"
        " VALUES (%s, %s, 1, 'User', 'UserRegistered', 1, %s, '\\x00', '{}', '\\x00', '\\x01')",
        (position, uuid4(), datetime.now(UTC)),
    )


def test_the_writer_appends_but_never_rewrites_the_log(urls: dict[str, str]) -> None:
    writer = urls["writer"]
    insert_event(writer)
    assert run(writer, f"SELECT count(*) FROM {EVENTS}")[0][0] >= 1
    assert "permission denied" in refused(writer, f"UPDATE {EVENTS} SET event_type = 'X'")
    assert "permission denied" in refused(writer, f"DELETE FROM {EVENTS}")
    assert "permission denied" in refused(writer, f"TRUNCATE {EVENTS}")
    assert "must be owner" in refused(writer, f"ALTER TABLE {EVENTS} DISABLE TRIGGER USER")
    assert "must be owner" in refused(writer, f"DROP TABLE {EVENTS}")
    refused(writer, "SET session_replication_role = replica")
    refused(writer, "CREATE TABLE ek_test_writer_made (a int)")


def test_the_writer_keeps_the_side_tables(urls: dict[str, str]) -> None:
    writer, stream = urls["writer"], uuid4()
    run(writer, f"INSERT INTO {EVENTS}_claims VALUES ('email', %s, %s)", (str(stream), stream))
    run(
        writer,
        f"INSERT INTO {EVENTS}_claims VALUES ('email', %s, %s)"
        " ON CONFLICT (scope, key) DO UPDATE SET owner = excluded.owner",
        (str(stream), uuid4()),
    )
    run(writer, f"DELETE FROM {EVENTS}_claims WHERE key = %s", (str(stream),))
    run(writer, f"INSERT INTO {EVENTS}_data_keys VALUES (%s, '\\x00')", (stream,))
    run(writer, f"DELETE FROM {EVENTS}_data_keys WHERE stream_id = %s", (stream,))  # erasure
    run(
        writer,
        f"INSERT INTO {EVENTS}_idempotency (key, request_hash, result) VALUES (%s, 'h', '1')",
        (str(stream),),
    )
    refused(writer, f"DELETE FROM {EVENTS}_idempotency")
    refused(writer, "SELECT * FROM rm_roletest_users")  # not the read side


def test_the_owner_cannot_rewrite_the_log_either(urls: dict[str, str]) -> None:
    owner = urls["owner"]
    insert_event(urls["writer"])
    # The owner's own triggers refuse (with the privilege error code)...
    assert "append-only" in refused(owner, f"UPDATE {EVENTS} SET event_type = 'X'")
    assert "append-only" in refused(owner, f"DELETE FROM {EVENTS}")
    assert "append-only" in refused(owner, f"TRUNCATE {EVENTS}")
    # ...and, not being a superuser, it cannot have them skipped.
    if not run(owner, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0]:
        refused(owner, "SET session_replication_role = replica")


@pytest.mark.parametrize("role", ["relay", "projector", "auditor"])
def test_the_readers_of_the_log_only_read_it(urls: dict[str, str], role: str) -> None:
    url = urls[role]
    run(url, f"SELECT count(*) FROM {EVENTS}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_event(url)
    refused(url, f"UPDATE {EVENTS} SET event_type = 'X'")
    refused(url, f"DELETE FROM {EVENTS}")
    refused(url, f"TRUNCATE {EVENTS}")
    if role == "relay":  # it publishes the log sealed: it opens nothing
        refused(url, f"SELECT count(*) FROM {EVENTS}_data_keys")
    else:  # the projector opens what it applies, the auditor what it reads
        run(url, f"SELECT count(*) FROM {EVENTS}_data_keys")
    refused(url, f"DELETE FROM {EVENTS}_data_keys")
    refused(url, f"SELECT * FROM {EVENTS}_claims")
    refused(url, "SELECT * FROM api_keys")
    refused(url, "SET session_replication_role = replica")


def test_the_relay_keeps_its_cursor_only(urls: dict[str, str]) -> None:
    relay = urls["relay"]
    run(
        relay,
        "INSERT INTO eventkeep_relay_cursor VALUES ('ek-test', 1)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
    )
    refused(relay, "CREATE TABLE ek_test_relay_made (a int)")
    refused(relay, "SELECT * FROM rm_roletest_users")


def test_the_query_side_only_reads_the_read_models(urls: dict[str, str]) -> None:
    query = urls["query"]
    run(query, "SELECT count(*) FROM rm_roletest_users")
    run(query, "SELECT count(*) FROM api_keys")  # the API checks keys
    refused(query, "INSERT INTO rm_roletest_progress VALUES ('x', 1)")
    refused(query, "UPDATE rm_roletest_users SET version = 0")
    refused(query, "DELETE FROM rm_roletest_users")
    refused(query, "TRUNCATE rm_roletest_users")
    refused(query, f"SELECT count(*) FROM {EVENTS}")
    refused(query, "INSERT INTO api_keys (id) VALUES ('x')")
    refused(query, "CREATE TABLE ek_test_query_made (a int)")
    refused(query, "SET session_replication_role = replica")


def test_what_the_projector_creates_later_the_query_side_reads(urls: dict[str, str]) -> None:
    projector, query = urls["projector"], urls["query"]
    run(projector, "DROP TABLE IF EXISTS rm_roletest_later")
    run(projector, "CREATE TABLE rm_roletest_later (a int)")
    run(projector, "INSERT INTO rm_roletest_later VALUES (1)")
    assert run(query, "SELECT a FROM rm_roletest_later") == [(1,)]
    refused(query, "INSERT INTO rm_roletest_later VALUES (2)")
    refused(projector, f"INSERT INTO {EVENTS}_claims VALUES ('a', 'b', %s)", (uuid4(),))
    run(projector, "DROP TABLE rm_roletest_later")


def test_provisioning_twice_changes_nothing_and_refuses_the_owner_as_a_role(
    urls: dict[str, str],
) -> None:
    owner = urls["owner"]
    user = conninfo_to_dict(owner)["user"]
    logins = [Login(role, f"ek_test_{role}", PASSWORD) for role in ROLES]
    assert provision(owner, logins, events_tables=(EVENTS,)) == provision(
        owner, logins, events_tables=(EVENTS,)
    )
    with pytest.raises(ValueError, match="must not be the owner"):
        provision(owner, [Login("writer", str(user), None)], events_tables=(EVENTS,))
