"""Versioned schema migrations: each applied once, in order, in a transaction; serialised so
that processes started together on an empty database all start; tables made before versioning
adopted as version 1 without losing a row; a schema newer than the code refused in one line;
`eventkeep db migrate` and `eventkeep db status`. Both modes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment
from typer.testing import CliRunner

from eventkeep.api import cli
from eventkeep.api.keys import KEY_STORE_SCHEMA
from eventkeep.eventstore.hashchain import GENESIS, recomputed_hash
from eventkeep.eventstore.migrations import (
    EVENT_STORE_MIGRATIONS,
    VERSION_TABLE,
    Migration,
    PostgresSchemaDatabase,
    Schema,
    SchemaDatabase,
    SchemaTooNewError,
    SQLiteSchemaDatabase,
    migrate,
    quote_identifier,
    sqlite_connection,
    status,
)
from tests.eventstore.conftest import MakeRecorder
from tests.eventstore.stores import drop_postgres_tables, postgres_env, postgres_url
from tests.eventstore.test_global_log import events_for

OpenDatabase = Callable[[], AbstractContextManager[SchemaDatabase]]
TABLE = "ektest_migrated"


@pytest.fixture(params=["embedded", "distributed"])
def open_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenDatabase]:
    """Opens connections to one fresh database (a file, or the test PostgreSQL database)."""
    if request.param == "embedded":

        @contextmanager
        def opened() -> Iterator[SchemaDatabase]:
            with closing(sqlite_connection(str(tmp_path / "db.sqlite"))) as connection:
                yield SQLiteSchemaDatabase(connection)

        yield opened
        return

    def forget() -> None:
        drop_postgres_tables(TABLE)
        with psycopg.connect(postgres_url(), autocommit=True) as connection:
            if connection.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()[0]:
                connection.execute(f"DELETE FROM {VERSION_TABLE} WHERE component = 'ektest'")

    @contextmanager
    def opened_postgres() -> Iterator[SchemaDatabase]:
        with psycopg.connect(postgres_url(), autocommit=True) as connection:
            yield PostgresSchemaDatabase(connection)

    forget()
    yield opened_postgres
    forget()


def schema(*steps: tuple[str, ...]) -> Schema:
    """Migration n runs `steps[n - 1]` (the same SQL in both dialects)."""
    migrations = [
        Migration(number, f"step {number}", postgres=sql, sqlite=sql)
        for number, sql in enumerate(steps, start=1)
    ]
    return Schema("ektest", migrations, anchor=quote_identifier(TABLE))


CREATE = (f"CREATE TABLE {TABLE} (step INTEGER NOT NULL)", f"INSERT INTO {TABLE} VALUES (1)")
SECOND = (f"INSERT INTO {TABLE} VALUES (2)",)
THIRD = (f"INSERT INTO {TABLE} VALUES (3)",)


def steps_run(open_database: OpenDatabase) -> list[int]:
    with open_database() as database, database.transaction() as run:
        return [row[0] for row in run(f"SELECT step FROM {TABLE} ORDER BY step")]


def test_each_migration_is_applied_once_in_order(open_database: OpenDatabase) -> None:
    with open_database() as database:
        assert [m.version for m in migrate(database, schema(CREATE, SECOND))] == [1, 2]
    with open_database() as database:
        assert [m.version for m in migrate(database, schema(CREATE, SECOND, THIRD))] == [3]
        assert migrate(database, schema(CREATE, SECOND, THIRD)) == []
        found = status(database, schema(CREATE, SECOND, THIRD))
    assert steps_run(open_database) == [1, 2, 3]
    assert (found.current, found.latest, list(found.pending)) == (3, 3, [])
    assert found.applied_at is not None and found.applied_at <= datetime.now(UTC)


def test_a_failing_migration_changes_nothing_and_stays_pending(
    open_database: OpenDatabase,
) -> None:
    broken = (f"INSERT INTO {TABLE} VALUES (2)", "INSERT INTO ektest_no_such_table VALUES (1)")
    with open_database() as database, pytest.raises(Exception, match="ektest_no_such_table"):
        migrate(database, schema(CREATE, broken))
    with open_database() as database:
        found = status(database, schema(CREATE, broken))
    assert (found.current, [m.version for m in found.pending]) == (1, [2])
    assert steps_run(open_database) == [1]  # the failed migration's first statement undone

    with open_database() as database:
        assert [m.version for m in migrate(database, schema(CREATE, SECOND))] == [2]
    assert steps_run(open_database) == [1, 2]


def test_a_schema_newer_than_the_code_is_refused_in_one_line(
    open_database: OpenDatabase,
) -> None:
    with open_database() as database:
        migrate(database, schema(CREATE, SECOND, THIRD))
    with open_database() as database, pytest.raises(SchemaTooNewError) as refused:
        migrate(database, schema(CREATE, SECOND))
    assert "\n" not in str(refused.value)
    assert "version 3" in str(refused.value) and "ektest" in str(refused.value)
    assert steps_run(open_database) == [1, 2, 3]


# --- the event store's own schema ------------------------------------------------------------


def test_an_empty_store_is_created_at_the_latest_version(make_recorder: MakeRecorder) -> None:
    store = make_recorder()
    found = store.schema_status()
    assert found.current == found.latest >= 1 and not found.pending
    assert store.insert_events(events_for(uuid4(), 1, 2)) == [1, 2]


def test_a_store_made_before_versioning_is_adopted_as_version_1(
    make_recorder: MakeRecorder,
) -> None:
    before = make_recorder()
    stream = uuid4()
    before.insert_events(events_for(stream, 1, 3), metadata={"actor": "old release"})
    with before.sql.schema_database() as database, database.transaction() as run:
        run(f"DROP TABLE {VERSION_TABLE}")  # as the releases before versioning left it
    assert before.schema_status().current == 0

    after = make_recorder()  # opens (and migrates) the store as a process would

    # Adopted as version 1 (tables kept, rows kept), then the later versions applied.
    assert after.schema_status().current == after.schema.latest == len(EVENT_STORE_MIGRATIONS)
    assert [e.position for e in after.select_notifications(None, 10)] == [1, 2, 3]
    assert after.insert_events(events_for(stream, 4, 1)) == [4]
    previous = GENESIS
    for event in after.select_notifications(None, 10, decrypt=False):
        assert event.hash == recomputed_hash(event, previous)
        previous = event.hash


def store_env(mode: str, tmp_path: Path) -> dict[str, str]:
    if mode == "embedded":
        return {
            "PERSISTENCE_MODULE": "eventkeep.eventstore.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "events.db"),
        }
    drop_postgres_tables()
    return postgres_env()


@pytest.mark.parametrize("mode", ["embedded", "distributed"])
def test_processes_started_together_on_an_empty_database_all_start(
    mode: str, tmp_path: Path
) -> None:
    env = store_env(mode, tmp_path)
    start = time.time() + 3  # every process imports first, then all open the store at once
    program = textwrap.dedent(
        f"""
        import time
        from eventsourcing.persistence import InfrastructureFactory
        from eventsourcing.utils import Environment
        factory = InfrastructureFactory.construct(Environment("", {env!r}))
        time.sleep(max(0.0, {start} - time.time()))
        factory.application_recorder()  # what every eventkeep process opens
        factory.close()
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", program], stderr=subprocess.PIPE, env=dict(os.environ)
        )
        for _ in range(6)
    ]
    failures = [p.stderr.read().decode() for p in processes if p.wait(60) != 0]  # type: ignore[union-attr]
    assert failures == []

    factory = InfrastructureFactory.construct(Environment("", env))
    try:
        recorder: Any = factory.application_recorder()
        with recorder.sql.schema_database() as database, database.transaction() as run:
            versions = run(
                f"SELECT version FROM {VERSION_TABLE} WHERE component = %s",
                (recorder.events_table_name,),
            )
        # Each applied once, not six times.
        assert sorted(version for (version,) in versions) == [
            m.version for m in EVENT_STORE_MIGRATIONS
        ]
    finally:
        factory.close()
        if mode == "distributed":
            drop_postgres_tables()


@pytest.mark.parametrize("create_table", ["y", "n"])
@pytest.mark.parametrize("mode", ["embedded", "distributed"])
def test_a_process_refuses_a_store_migrated_by_a_newer_release(
    mode: str, create_table: str, tmp_path: Path
) -> None:
    env = store_env(mode, tmp_path)
    factory = InfrastructureFactory.construct(Environment("", env))
    recorder: Any = factory.application_recorder()
    with recorder.sql.schema_database() as database, database.transaction() as run:
        run(
            f"INSERT INTO {VERSION_TABLE} (component, version, name, applied_at)"
            " VALUES (%s, 99, 'from the future', %s)",
            (recorder.events_table_name, datetime.now(UTC).isoformat()),
        )
    factory.close()

    later = InfrastructureFactory.construct(Environment("", {**env, "CREATE_TABLE": create_table}))
    try:
        with pytest.raises(SchemaTooNewError, match="version 99"):
            later.application_recorder()
    finally:
        later.close()
        if mode == "distributed":
            drop_postgres_tables()


# --- the command line ----------------------------------------------------------------------


@pytest.fixture(params=["embedded", "distributed"])
def db_cli(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    monkeypatch.setenv("EVENTKEEP_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("EVENTKEEP_CLAIM_SECRET", "a-test-claim-secret-of-more-than-32-bytes")
    tables = ("shop_events", "shop_events_claims", "shop_events_idempotency")
    if request.param == "embedded":
        monkeypatch.delenv("EVENTKEEP_POSTGRES_URL", raising=False)
    else:
        monkeypatch.setenv("EVENTKEEP_POSTGRES_URL", postgres_url())
        drop_postgres_tables(*tables, "shop_events_data_keys", "api_keys")
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli.app, ["db", *args])
    if request.param == "distributed":
        drop_postgres_tables(*tables, "shop_events_data_keys", "api_keys")


def test_db_migrate_then_status(db_cli: Callable[..., Any]) -> None:
    before = db_cli("status")
    assert before.exit_code == 0, before.output
    assert before.output.count("│ 0 ") == 2  # event store and keys: nothing applied yet

    migrated = db_cli("migrate")
    assert migrated.exit_code == 0, migrated.output
    assert f"event store: version {len(EVENT_STORE_MIGRATIONS)}" in migrated.output
    assert f"keys: version {KEY_STORE_SCHEMA.latest}" in migrated.output

    again = db_cli("migrate")
    assert again.exit_code == 0 and again.output.count("nothing to apply") == 2

    after = db_cli("status")
    assert after.exit_code == 0 and after.output.count("none") == 2  # nothing pending


def test_db_migrate_refuses_a_newer_schema_in_one_line(db_cli: Callable[..., Any]) -> None:
    assert db_cli("migrate").exit_code == 0
    newer = KEY_STORE_SCHEMA.latest + 1
    future = Schema(
        "api_keys", [Migration(v, "v", (), ()) for v in range(1, newer + 1)], '"api_keys"'
    )
    from eventkeep.bootstrap import build_key_store
    from eventkeep.settings import Settings

    keys: Any = build_key_store(Settings())
    with keys._schema_database() as database:
        migrate(database, future)
    keys.close()

    refused = db_cli("migrate")
    assert refused.exit_code == 2
    [line] = refused.output.strip().splitlines()
    assert "api_keys" in line and f"version {newer}" in line

    shown = db_cli("status")
    assert shown.exit_code == 0 and "newer than code" in shown.output
