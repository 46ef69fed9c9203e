"""The `eventsourcing` library's own recorder test cases, run against both eventkeep stores.

PostgreSQL tests talk to the real server named by EVENTKEEP_POSTGRES_URL; SQLite tests use a
temporary file.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment

from eventkeep.eventstore.postgres import (
    PostgresApplicationRecorder,
    PostgresFactory,
    PostgresProcessRecorder,
)
from eventkeep.eventstore.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteFactory,
    SQLiteProcessRecorder,
)
from tests.eventstore.stores import drop_postgres_tables, postgres_datastore, postgres_env


class JoinsStrayThreads:
    """Waits, before a test's store is closed, for the threads the test started and left
    running: the library's concurrency tests stop their readers without joining them, and a
    SQLite connection closed under a reading thread crashes the interpreter (it did in CI)."""

    def setUp(self) -> None:
        self.threads_before = set(threading.enumerate())
        super().setUp()  # type: ignore[misc]

    def join_stray_threads(self) -> None:
        deadline = time.monotonic() + 2  # the readers stop within milliseconds of being told
        for thread in set(threading.enumerate()) - self.threads_before:
            if not thread.name.startswith("eventkeep-"):  # ours stop when the recorder closes
                thread.join(max(0.0, deadline - time.monotonic()))


class OnPostgres(JoinsStrayThreads):
    """Fresh tables on the real PostgreSQL for each test."""

    def setUp(self) -> None:
        drop_postgres_tables()
        self.datastore = postgres_datastore(pool_size=4, max_overflow=12)
        self.recorders: list[Any] = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        self.join_stray_threads()
        for recorder in self.recorders:
            if hasattr(recorder, "close"):
                recorder.close()
        self.datastore.close()
        drop_postgres_tables()

    def made(self, recorder: Any) -> Any:
        recorder.create_table()
        self.recorders.append(recorder)
        return recorder


class OnSQLite(JoinsStrayThreads):
    """A fresh SQLite file for each test."""

    def setUp(self) -> None:
        self.directory = tempfile.TemporaryDirectory()
        self.datastore = SQLiteDatastore(str(Path(self.directory.name) / "events.db"))
        self.recorders: list[Any] = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        self.join_stray_threads()
        for recorder in self.recorders:
            if hasattr(recorder, "close"):
                recorder.close()
        self.datastore.close()
        self.directory.cleanup()

    def made(self, recorder: Any) -> Any:
        recorder.create_table()
        self.recorders.append(recorder)
        return recorder


class TestPostgresApplicationRecorder(OnPostgres, ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.made(PostgresApplicationRecorder(self.datastore))


class TestPostgresNonInterleaving(OnPostgres, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.made(PostgresApplicationRecorder(self.datastore))


class TestPostgresTrackingRecorder(OnPostgres, TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.made(PostgresTrackingRecorder(self.datastore))


class TestPostgresProcessRecorder(OnPostgres, ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.made(PostgresProcessRecorder(self.datastore))


class TestSQLiteApplicationRecorder(OnSQLite, ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.made(SQLiteApplicationRecorder(self.datastore))


class TestSQLiteNonInterleaving(OnSQLite, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.made(SQLiteApplicationRecorder(self.datastore))


class TestSQLiteTrackingRecorder(OnSQLite, TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.made(SQLiteTrackingRecorder(self.datastore))


class TestSQLiteProcessRecorder(OnSQLite, ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.made(SQLiteProcessRecorder(self.datastore))


class CustomPostgresTrackingRecorder(PostgresTrackingRecorder):
    pass


class CustomSQLiteTrackingRecorder(SQLiteTrackingRecorder):
    pass


class TestPostgresFactory(InfrastructureFactoryTestCase[PostgresFactory]):
    def setUp(self) -> None:
        drop_postgres_tables()
        self.env = Environment("TestCase", postgres_env())
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        drop_postgres_tables(
            *(f"testcase_{t}" for t in ("events", "events_claims", "events_idempotency"))
        )

    def expected_factory_class(self) -> type[PostgresFactory]:
        return PostgresFactory

    def expected_aggregate_recorder_class(self) -> type:
        return InfrastructureFactory.construct(self.env).aggregate_recorder_class  # type: ignore[attr-defined]

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return PostgresApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return PostgresTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return CustomPostgresTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return PostgresProcessRecorder


class TestSQLiteFactory(InfrastructureFactoryTestCase[SQLiteFactory]):
    def setUp(self) -> None:
        self.directory = tempfile.TemporaryDirectory()
        self.env = Environment(
            "TestCase",
            {
                "PERSISTENCE_MODULE": "eventkeep.eventstore.sqlite",
                "SQLITE_DBNAME": str(Path(self.directory.name) / "events.db"),
            },
        )
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        self.directory.cleanup()

    def expected_factory_class(self) -> type[SQLiteFactory]:
        return SQLiteFactory

    def expected_aggregate_recorder_class(self) -> type:
        return SQLiteFactory.aggregate_recorder_class

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return SQLiteApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return SQLiteTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return CustomSQLiteTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return SQLiteProcessRecorder
