"""Queries from a real streaming replica: a hot standby of the shared PostgreSQL that
`infra/services up replica` makes (`pg_basebackup -R`) in a folder and on a port of this
test's own, with TLS as the primary. Read-your-writes through the replica with X-Min-Position;
a replica whose replay is paused (lagging) or that is stopped sends queries to the primary,
never a 500; the metrics say so."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr, ValidationError

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring, wire
from eventkeep.api.keys import Role
from eventkeep.bootstrap import (
    database_url,
    projector_read_models,
    replica_url,
)
from eventkeep.projections.database import PostgresDatabase
from eventkeep.projections.log_feed import LogFeed
from eventkeep.projections.queries import PolledProgress
from eventkeep.projections.readmodels import ReadModels
from eventkeep.projections.replica import FallbackDatabase, ReplicaHealth
from eventkeep.settings import Settings
from tests.api.conftest import SHOP_TABLES, TEST_SECRET, distributed_settings
from tests.api.shopping import USER
from tests.conftest_services import POSTGRES_URL, require_env
from tests.eventstore.stores import drop_postgres_tables
from tests.ops.cluster import REPO, as_postgres, free_port

SERVICES = REPO / "infra" / "services"
# Replication here takes milliseconds; the bound guards against a replica that never catches
# up, with a wide margin for a loaded two-core machine.
CATCH_UP = 30.0


class Replica:
    """`infra/services … replica` of the shared primary, in a folder and on a port of its own."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="eventkeep-replica-"))
        os.chmod(self.folder, 0o755)  # the postgres user goes in
        self.port = free_port()
        self.url = ""  # EVENTKEEP_POSTGRES_REPLICA_URL, once up
        self.env = {
            **os.environ,
            "EVENTKEEP_PG_REPLICA_DIR": str(self.folder),
            "EVENTKEEP_PG_REPLICA_PORT": str(self.port),
        }

    def run(self, *args: str, **env: str) -> str:
        done = subprocess.run(
            [str(SERVICES), *args],
            env=self.env | env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def up(self) -> str:
        """Starts it (made first when missing); answers its EVENTKEEP_POSTGRES_REPLICA_URL."""
        name, _, value = self.run("up", "replica").strip().removeprefix("export ").partition("=")
        assert name == "EVENTKEEP_POSTGRES_REPLICA_URL"
        return shlex.split(value)[0]

    def url_for(self, settings: Settings) -> str:
        """Its URL as `serve` connects (the query role's credentials)."""
        merged = replica_url(
            settings.model_copy(update={"postgres_replica_url": SecretStr(self.url)})
        )
        assert merged is not None
        return merged

    def down(self) -> None:
        self.run("down", "replica")

    def superuser(self, statement: str) -> str:
        """As the postgres OS user on the replica's socket (pausing replay needs a superuser)."""
        done = subprocess.run(
            as_postgres(
                "psql", "-X", "-At", "-h", self.folder / "run", "-p", str(self.port),
                "-U", "postgres", "-d", "postgres", "-c", statement,
            ),
            cwd="/", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def close(self) -> None:
        self.down()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def replica() -> Iterator[Replica]:
    made = Replica()
    made.url = made.up()
    yield made
    made.close()


@pytest.fixture
def client_for(
    replica: Replica, tmp_path: Path
) -> Iterator[Callable[[float], tuple[TestClient, Wiring]]]:
    """An API reading the replica (waiting `replica_wait` seconds for it), over read models
    a log feed keeps on the primary; with a client key."""
    drop_postgres_tables(*SHOP_TABLES)
    _drop_read_models()
    opened: list[tuple[TestClient, LogFeed, Wiring]] = []

    def make(replica_wait: float) -> tuple[TestClient, Wiring]:
        settings = distributed_settings(tmp_path / "home").model_copy(
            update={
                "postgres_replica_url": SecretStr(replica.url),
                "replica_wait": replica_wait,
            }
        )
        wiring = wire(settings)  # as `eventkeep serve` builds it
        system = wiring.built
        assert system is not None
        # The read models follow the log in-process (no Kafka needed to show the replica).
        feed = LogFeed(system.recorder, system.read_models, system.cache)
        feed.start()
        key = wiring.keys.create(Role.client, "replica").secret_key
        client = TestClient(
            create_app(wiring),
            headers={"Authorization": f"Bearer {key}"},
            raise_server_exceptions=False,
        )
        client.__enter__()
        opened.append((client, feed, wiring))
        _until(lambda: wiring.replica is not None and wiring.replica.health.up, "replica read")
        return client, wiring

    yield make
    for client, feed, wiring in opened:
        client.__exit__(None, None, None)
        feed.stop()
        wiring.close()


def _drop_read_models() -> None:
    """As the owner: whoever made them (a former run, another test), they are gone."""
    stale = ReadModels.open(postgres_url=require_env(POSTGRES_URL))
    stale.drop()
    stale.close()


def _until(condition: Callable[[], bool], what: str, seconds: float = CATCH_UP) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"eventkeep_{name}_total", labels) or 0.0


def _new_user(client: TestClient, email: str) -> tuple[str, int]:
    made = client.post("/v1/users", json={**USER, "email": email})
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["position"]


def test_read_your_writes_through_the_replica(
    client_for: Callable[[float], tuple[TestClient, Wiring]], replica: Replica
) -> None:
    # A wait long enough for the replica on a loaded machine: every read here is the replica's.
    client, wiring = client_for(CATCH_UP)
    assert replica.superuser("SELECT pg_is_in_recovery()") == "t"
    before = _count("replica_queries", database="replica")
    fallbacks = _count("replica_fallbacks", reason="behind")
    for number in range(5):
        user_id, position = _new_user(client, f"ryw{number}@example.com")
        seen = client.get(f"/v1/users/{user_id}", headers={"X-Min-Position": str(position)})
        assert seen.status_code == 200, seen.text
        assert seen.json()["email"] == f"ryw{number}@example.com"
        assert int(seen.headers["X-Projection-Position"]) >= position
    # A query by another column than the id (never cached): the replica's table itself.
    found = client.get(
        "/v1/users", params={"email": "ryw4@example.com"}, headers={"X-Min-Position": str(position)}
    )
    assert found.status_code == 200, found.text
    assert found.json()["id"] == user_id
    assert _count("replica_queries", database="replica") == before + 6
    assert _count("replica_fallbacks", reason="behind") == fallbacks
    # The replica's own progress is what the query waited for: it holds the last write.
    assert wiring.replica is not None
    assert wiring.replica.replica.position("users") >= position


def test_a_lagging_replica_sends_queries_to_the_primary(
    client_for: Callable[[float], tuple[TestClient, Wiring]], replica: Replica
) -> None:
    client, wiring = client_for(0.3)
    admin = {"Authorization": f"Bearer {wiring.keys.create(Role.admin, 'ops').secret_key}"}
    replica.superuser("SELECT pg_wal_replay_pause()")
    try:
        behind = _count("replica_fallbacks", reason="behind")
        on_primary = _count("replica_queries", database="primary")
        user_id, position = _new_user(client, "lag@example.com")
        seen = client.get(f"/v1/users/{user_id}", headers={"X-Min-Position": str(position)})
        assert seen.status_code == 200, seen.text
        assert seen.json()["email"] == "lag@example.com"
        assert _count("replica_fallbacks", reason="behind") == behind + 1
        assert _count("replica_queries", database="primary") == on_primary + 1
        scraped = client.get("/metrics", headers=admin)
        assert scraped.status_code == 200
        lag = re.search(r'eventkeep_replica_lag_events\{projection="users"\} (\S+)', scraped.text)
        assert lag is not None and float(lag.group(1)) >= 1, scraped.text
        assert "eventkeep_replica_up 1.0" in scraped.text
    finally:
        replica.superuser("SELECT pg_wal_replay_resume()")
    # Replay resumed: the replica catches up and answers again.
    assert wiring.replica is not None
    _until(lambda: wiring.replica.replica.position("users") >= position, "replica catch-up")
    on_replica = _count("replica_queries", database="replica")
    again = client.get(f"/v1/users/{user_id}", headers={"X-Min-Position": str(position)})
    assert again.status_code == 200, again.text
    assert _count("replica_queries", database="replica") == on_replica + 1


def test_a_stopped_replica_sends_queries_to_the_primary(
    client_for: Callable[[float], tuple[TestClient, Wiring]], replica: Replica
) -> None:
    client, wiring = client_for(CATCH_UP)
    user_id, position = _new_user(client, "before@example.com")
    first = client.get(f"/v1/users/{user_id}", headers={"X-Min-Position": str(position)})
    assert first.status_code == 200, first.text
    unreachable = _count("replica_fallbacks", reason="unreachable")
    replica.down()
    try:
        # At once (a query may still find the replica "up" and fail on it: run again on the
        # primary) and after the replica is known down: every answer is the primary's, no 500.
        later_id, later = _new_user(client, "during@example.com")
        for wanted, row in ((position, user_id), (later, later_id), (0, user_id)):
            started = time.monotonic()
            seen = client.get(f"/v1/users/{row}", headers={"X-Min-Position": str(wanted)})
            assert seen.status_code == 200, seen.text
            # Not the replica's 30 s wait: a replica found down is waited on no more.
            assert time.monotonic() - started < CATCH_UP / 3
        for email, row in (("before@example.com", user_id), ("during@example.com", later_id)):
            found = client.get("/v1/users", params={"email": email})
            assert found.status_code == 200, found.text
            assert found.json()["id"] == row
        assert _count("replica_fallbacks", reason="unreachable") > unreachable
        assert wiring.replica is not None
        _until(lambda: not wiring.replica.health.up, "replica known down")
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert ready.json()["parts"]["read_replica"]["status"] == "down"
    finally:
        replica.up()
    # Back: its progress is read again and queries return to it.
    _until(lambda: wiring.replica.health.up, "replica read again")
    on_replica = _count("replica_queries", database="replica")
    back = client.get(f"/v1/users/{later_id}", headers={"X-Min-Position": str(later)})
    assert back.status_code == 200, back.text
    assert _count("replica_queries", database="replica") == on_replica + 1


def test_a_query_that_fails_on_the_replica_runs_again_on_the_primary(
    replica: Replica, tmp_path: Path
) -> None:
    """The replica stops while it is still thought up (its progress read a moment ago): the
    query's statement fails there and is run on the primary; the replica is then known down."""
    settings = distributed_settings(tmp_path / "home")
    _drop_read_models()
    primary = projector_read_models(settings)  # its tables, readable by the query role
    standby = PostgresDatabase(replica.url_for(settings), timeout=1.0)
    progress = PolledProgress(ReadModels(standby))
    # Thought up for an hour after its progress was last read: only the failure tells.
    health = ReplicaHealth(progress, stale_after=3600)
    models = ReadModels(FallbackDatabase(standby, primary.db, health))
    try:
        _until(lambda: health.up, "replica progress read")
        with primary.db.transaction() as cursor:
            cursor.execute(
                f"INSERT INTO {primary['users'].table()}"
                " (id, version, email, status, registered_at, updated_at)"
                " VALUES ('only-on-primary', 1, 'p@example.com', 'active', 'now', 'now')"
            )
        replica.down()
        try:
            progress.stop()  # no poll may tell first
            assert health.up
            unreachable = _count("replica_fallbacks", reason="unreachable")
            row = models["users"].get("only-on-primary")
            assert row is not None and row["email"] == "p@example.com"
            assert not health.up
            assert _count("replica_fallbacks", reason="unreachable") == unreachable + 1
        finally:
            replica.up()
    finally:
        progress.stop()
        models.close()
        primary.drop()
        primary.close()


def test_a_statement_the_standby_cancels_for_replay_runs_on_the_primary(
    replica: Replica, tmp_path: Path
) -> None:
    """A lock the primary takes (as a rebuild's swap does) is replayed on the standby, which
    cancels the replica's statement in its way (40001, conflict with recovery): the statement
    is run on the primary instead, and the replica stays in use."""
    settings = distributed_settings(tmp_path / "home")
    _drop_read_models()
    primary = projector_read_models(settings)  # its tables, readable by the query role
    standby = PostgresDatabase(replica.url_for(settings), timeout=1.0)
    progress = PolledProgress(ReadModels(standby))
    health = ReplicaHealth(progress)
    database = FallbackDatabase(standby, primary.db, health)
    table = primary["users"].table()
    statement = f"SELECT pg_sleep(3), count(*) AS found FROM {table}"
    # Replay waits this long for a conflicting statement before it cancels it (default 30 s).
    replica.superuser("ALTER SYSTEM SET max_standby_streaming_delay = '100ms'")
    replica.superuser("SELECT pg_reload_conf()")
    try:
        _until(lambda: health.up, "replica progress read")
        conflicts = _count("replica_fallbacks", reason="conflict")
        answer: dict[str, object] = {}

        def read() -> None:
            with database.reading() as cursor:
                cursor.execute(statement)
                answer.update(cursor.fetchone() or {})

        reader = threading.Thread(target=read)
        reader.start()
        running = (
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            f" AND query = '{statement}'"
        )
        _until(lambda: replica.superuser(running) == "1", "the statement running on the replica")
        with primary.db.transaction() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        reader.join(CATCH_UP)
        assert not reader.is_alive()
        assert answer == {"pg_sleep": "", "found": 0}
        assert _count("replica_fallbacks", reason="conflict") == conflicts + 1
        assert health.up  # a conflict is no outage
    finally:
        replica.superuser("ALTER SYSTEM RESET max_standby_streaming_delay")
        replica.superuser("SELECT pg_reload_conf()")
        progress.stop()
        standby.close()
        primary.drop()
        primary.close()


def test_the_replica_is_a_hot_standby_read_as_the_query_role_over_tls(
    replica: Replica, tmp_path: Path
) -> None:
    settings = distributed_settings(tmp_path / "home").model_copy(
        update={"postgres_replica_url": SecretStr(replica.url)}
    )
    merged = replica_url(settings)
    query = database_url(settings, "query")
    assert merged is not None and query is not None
    assert conninfo_to_dict(merged)["port"] == str(replica.port)
    with psycopg.connect(merged) as connection:
        row = connection.execute(
            "SELECT pg_is_in_recovery(), current_user,"
            " (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
        ).fetchone()
    assert row is not None
    in_recovery, user, ssl = row
    assert in_recovery is True
    assert user == conninfo_to_dict(query)["user"]  # the URL names no user: the query role's
    # TLS as the primary's (infra/services starts both with EVENTKEEP_TLS).
    assert ssl is ("sslmode" in require_env(POSTGRES_URL))


def test_infra_services_runs_the_replica_with_the_others_only_when_asked(replica: Replica) -> None:
    exported = f"EVENTKEEP_POSTGRES_REPLICA_URL='postgresql://127.0.0.1:{replica.port}/eventkeep"
    assert exported not in replica.run("env", EVENTKEEP_PG_REPLICA="off")
    assert exported in replica.run("env", EVENTKEEP_PG_REPLICA="on")
    status = replica.run("status", EVENTKEEP_PG_REPLICA="on").splitlines()
    assert [line.split()[:2] for line in status][:2] == [["postgres", "up"], ["replica", "up"]]
    assert "replica" not in replica.run("status", EVENTKEEP_PG_REPLICA="off")


def test_a_replica_needs_the_primary() -> None:
    with pytest.raises(ValidationError, match="REPLICA_URL needs EVENTKEEP_POSTGRES_URL"):
        Settings(
            postgres_url=None,
            postgres_replica_url=SecretStr("postgresql://127.0.0.1:1/eventkeep"),
            claim_secret=TEST_SECRET,
        )
