"""Least-privilege PostgreSQL roles: who may do what to the log, its side tables, the key store
and the read models.

The owner (a login role that is *not* a superuser; it needs CREATEROLE only to create the other
roles) owns the schema, the event store's tables and the key store, and runs the migrations.
The processes connect as their own login roles, each with only what it needs:

    writer     the log: SELECT, INSERT (never UPDATE, DELETE, TRUNCATE); claims and data keys:
               SELECT, INSERT, UPDATE, DELETE (claims are upserted and released, data keys
               destroyed on erasure); idempotency records: SELECT, INSERT; the key store's
               tables (api_keys, the customers' credentials and sessions): SELECT, INSERT,
               UPDATE, DELETE (the API's door and admin routes, `eventkeep keys`)
    relay      the log: SELECT (not the data keys); its cursor table: SELECT, INSERT, UPDATE
    projector  the log and its data keys: SELECT (gap filling, rebuilds); may CREATE tables
               in the schema: it owns the read-model tables it creates, and what it creates is
               readable by the query role (default privileges); existing read-model tables:
               read and write
    query      the read models: SELECT; api_keys: SELECT (the API checks keys)
    auditor    the log and its data keys: SELECT

Every role may read the schema-version table (a process checks that the schema is not newer
than its code) and nothing else. None owns the log, so none can drop, alter, disable the
append-only triggers of, or TRUNCATE it, and none is a superuser, so `session_replication_role`
(which would skip the triggers) is refused to all. UPDATE, DELETE and TRUNCATE of the log are
refused twice: no role has the privilege, and the owner's triggers refuse them.

`provision` creates the roles that are missing (each from its URL's user and password) and
grants all of the above; it is idempotent and serialised with the migrations (their advisory
lock), so processes may run it concurrently. `eventkeep db roles` runs it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from eventkeep.eventstore.migrations import (
    SCHEMA_LOCK,
    VERSION_TABLE,
    PostgresSchemaDatabase,
    Schema,
    event_store_schema,
    migrate,
    quote_identifier,
)

RoleName = Literal["writer", "relay", "projector", "query", "auditor"]
ROLES: tuple[RoleName, ...] = ("writer", "relay", "projector", "query", "auditor")

RELAY_CURSOR_TABLE = "eventkeep_relay_cursor"
KEY_TABLE = "api_keys"
READ_MODEL_PREFIX = "rm\\_"  # LIKE pattern of the read models' tables (any rebuild's too)

# The event store's tables, by suffix of the events table.
_EVENT_STORE_SUFFIXES = ("", "_claims", "_idempotency", "_data_keys")
# Each role's privileges on them (none where a suffix is missing).
_EVENT_STORE_GRANTS: dict[RoleName, dict[str, str]] = {
    "writer": {
        "": "SELECT, INSERT",
        "_claims": "SELECT, INSERT, UPDATE, DELETE",
        "_idempotency": "SELECT, INSERT",
        "_data_keys": "SELECT, INSERT, UPDATE, DELETE",
    },
    # The relay publishes the log as stored (personal fields sealed): it opens nothing, so it
    # may not read the data keys. The projector opens the fields of what it applies, the
    # auditor what it reads and exports.
    "relay": {"": "SELECT"},
    "projector": {"": "SELECT", "_data_keys": "SELECT"},
    "query": {},
    "auditor": {"": "SELECT", "_data_keys": "SELECT"},
}


@dataclass(frozen=True)
class Login:
    role: RoleName
    user: str
    password: str | None


def login_of(role: RoleName, url: str) -> Login:
    params = conninfo_to_dict(url)
    user = params.get("user")
    if not user:
        raise ValueError(f"the {role} URL names no user")
    password = params.get("password")
    return Login(role, str(user), str(password) if password is not None else None)


def provision(
    owner_url: str,
    logins: Sequence[Login],
    *,
    events_tables: Sequence[str] = ("shop_events",),
    schema: str = "public",
    migrate_first: Sequence[Schema] | None = None,
    api_tables: Sequence[str] = (KEY_TABLE,),
) -> list[str]:
    """Creates the missing roles and grants each its privileges (see the module); with
    `migrate_first` (the other schemas to migrate, e.g. the key store's), migrates the event
    store(s) and those as the owner first. Returns what it did, one line each. Runs as the
    owner (`owner_url`)."""
    done: list[str] = []
    with psycopg.connect(owner_url, autocommit=True) as connection:
        owner = _one(connection, "SELECT current_user")
        if _one(connection, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            done.append(f"warning: the owner {owner} is a superuser; it should not be")
        if migrate_first is not None:
            _migrate(connection, events_tables, schema, migrate_first)
        database = PostgresSchemaDatabase(connection)
        with database.serialised():  # concurrent GRANTs fail ("tuple concurrently updated")
            for login in logins:
                if login.user == owner:
                    raise ValueError(f"the {login.role} role must not be the owner ({owner})")
                done += _ensure_login(connection, login)
            with connection.transaction():
                _ensure_relay_cursor(connection, schema)
                done += _grant(connection, owner, logins, events_tables, schema, api_tables)
    return done


def _migrate(
    connection: psycopg.Connection[Any],
    events_tables: Sequence[str],
    schema: str,
    others: Sequence[Schema],
) -> None:
    database = PostgresSchemaDatabase(connection)
    for table in events_tables:
        migrate(database, event_store_schema(table, lambda name: _qualified(schema, name)))
    for other in others:
        migrate(database, other)


def _ensure_login(connection: psycopg.Connection[Any], login: Login) -> list[str]:
    role = sql.Identifier(login.user)
    exists = _one(connection, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (login.user,))
    done = []
    if not exists:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        done.append(f"created role {login.user} ({login.role})")
    # Only a superuser may change (even clear) SUPERUSER, REPLICATION and BYPASSRLS: a role that
    # has one of them is refused, not used.
    too_strong = _one(
        connection,
        "SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_roles WHERE rolname = %s",
        (login.user,),
    )
    if too_strong:
        raise ValueError(
            f"the {login.role} role {login.user} is a superuser or has REPLICATION or "
            "BYPASSRLS: clear them (as a superuser) first"
        )
    connection.execute(sql.SQL("ALTER ROLE {} LOGIN NOCREATEDB NOCREATEROLE").format(role))
    if login.password is not None:
        connection.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(login.password))
        )
    return done


def _ensure_relay_cursor(connection: psycopg.Connection[Any], schema: str) -> None:
    # Made by the owner so that the relay needs no CREATE on the schema.
    connection.execute(
        cast(
            Any,
            f"CREATE TABLE IF NOT EXISTS {_qualified(schema, RELAY_CURSOR_TABLE)}"
            " (name text PRIMARY KEY, position bigint NOT NULL)",
        )
    )


def _grant(
    connection: psycopg.Connection[Any],
    owner: str,
    logins: Sequence[Login],
    events_tables: Sequence[str],
    schema: str,
    api_tables: Sequence[str],
) -> list[str]:
    done: list[str] = []
    schema_id = quote_identifier(schema)
    read_models = [
        str(row[0])
        for row in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
            (schema, READ_MODEL_PREFIX + "%"),
        ).fetchall()
    ]
    for login in logins:
        user = quote_identifier(login.user)
        statements = [
            f"GRANT USAGE ON SCHEMA {schema_id} TO {user}",
            f"GRANT SELECT ON {_qualified(schema, VERSION_TABLE)} TO {user}",
        ]
        for table in events_tables:
            grants = _EVENT_STORE_GRANTS[login.role]
            for suffix in _EVENT_STORE_SUFFIXES:
                if not _exists(connection, schema, table + suffix):
                    continue
                qualified = _qualified(schema, table + suffix)
                # Revoked first: a grant an earlier version gave does not outlive its reason.
                statements.append(f"REVOKE ALL ON {qualified} FROM {user}")
                if suffix in grants:
                    statements.append(f"GRANT {grants[suffix]} ON {qualified} TO {user}")
            # The library's snapshot store beside the log (`shop_snapshots`): the writer's.
            snapshots = table.removesuffix("_events") + "_snapshots"
            if login.role == "writer" and _exists(connection, schema, snapshots):
                statements.append(
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_qualified(schema, snapshots)}"
                    f" TO {user}"
                )
        if login.role == "writer":
            statements += [
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_qualified(schema, table)} TO {user}"
                for table in api_tables
                if _exists(connection, schema, table)
            ]
        if login.role == "relay":
            statements.append(
                f"GRANT SELECT, INSERT, UPDATE ON {_qualified(schema, RELAY_CURSOR_TABLE)}"
                f" TO {user}"
            )
        if login.role == "query":
            if _exists(connection, schema, KEY_TABLE):
                statements.append(f"GRANT SELECT ON {_qualified(schema, KEY_TABLE)} TO {user}")
            statements += [
                f"GRANT SELECT ON {_qualified(schema, name)} TO {user}" for name in read_models
            ]
        if login.role == "projector":
            statements.append(f"GRANT CREATE ON SCHEMA {schema_id} TO {user}")
            statements += [
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_qualified(schema, name)} TO {user}"
                for name in read_models
            ]
        for statement in statements:
            connection.execute(cast(Any, statement))
        done.append(f"granted {login.role} ({login.user})")
    # What the projector creates later (read models, a rebuild's tables) is readable by the
    # query role. ALTER DEFAULT PRIVILEGES FOR ROLE needs the owner to be a member of the
    # projector role (CREATEROLE may grant that).
    projectors = [login for login in logins if login.role == "projector"]
    queries = [login for login in logins if login.role == "query"]
    for projector in projectors:
        member = _one(
            connection, "SELECT pg_has_role(current_user, %s, 'MEMBER')", (projector.user,)
        )
        if not member:
            connection.execute(
                sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(projector.user), sql.Identifier(owner)
                )
            )
        for query in queries:
            connection.execute(
                cast(
                    Any,
                    f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_identifier(projector.user)}"
                    f" IN SCHEMA {schema_id} GRANT SELECT ON TABLES"
                    f" TO {quote_identifier(query.user)}",
                )
            )
            # Tables the projector already created: granted by its default privileges when
            # it made them, unless they predate this grant.
            for name in read_models:
                connection.execute(
                    cast(
                        Any,
                        f"GRANT SELECT ON {_qualified(schema, name)}"
                        f" TO {quote_identifier(query.user)}",
                    )
                )
    return done


def tables_of(schema: Schema) -> list[str]:
    """The tables a schema's migrations create (PostgreSQL statements), in order."""
    made = (
        re.match(r"\s*CREATE TABLE (?:IF NOT EXISTS )?([A-Za-z_][A-Za-z0-9_]*)", statement)
        for migration in schema.migrations
        for statement in migration.postgres
    )
    return list(dict.fromkeys(match.group(1) for match in made if match))


def _exists(connection: psycopg.Connection[Any], schema: str, table: str) -> bool:
    return bool(
        _one(connection, "SELECT to_regclass(%s) IS NOT NULL", (_qualified(schema, table),))
    )


def _qualified(schema: str, name: str) -> str:
    return f"{quote_identifier(schema)}.{quote_identifier(name)}"


def _one(connection: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> Any:
    row = connection.execute(cast(Any, query), params or None).fetchone()
    return row[0] if row else None


def logins_from(urls: Mapping[RoleName, str | None]) -> list[Login]:
    """The logins of the roles whose URL is set."""
    return [login_of(role, url) for role, url in urls.items() if url]


__all__ = ["ROLES", "SCHEMA_LOCK", "Login", "RoleName", "login_of", "logins_from", "provision"]
