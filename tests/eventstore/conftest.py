"""Recorders of both modes for behaviour tests: embedded SQLite and the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.sqlite import SQLiteDatastore

from eventkeep.eventstore.postgres import PostgresApplicationRecorder
from eventkeep.eventstore.sqlite import SQLiteApplicationRecorder
from tests.api.conftest import wiring  # noqa: F401  (the shop wired in both modes)
from tests.eventstore.stores import drop_postgres_tables, postgres_datastore

MakeRecorder = Callable[[], Any]


@pytest.fixture(params=["embedded", "distributed"])
def make_recorder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeRecorder]:
    """Makes recorders over ONE store; each has its own committer, like separate processes."""
    made: list[Any] = []
    datastores: list[Any] = []
    if request.param == "distributed":
        drop_postgres_tables()

        def make() -> Any:
            datastore = postgres_datastore(pool_size=2, max_overflow=10)
            datastores.append(datastore)
            recorder = PostgresApplicationRecorder(datastore)
            recorder.create_table()
            made.append(recorder)
            return recorder
    else:

        def make() -> Any:
            datastore = SQLiteDatastore(str(tmp_path / "events.db"))
            datastores.append(datastore)
            recorder = SQLiteApplicationRecorder(datastore)
            recorder.create_table()
            made.append(recorder)
            return recorder

    yield make
    for recorder in made:
        recorder.close()
    for datastore in datastores:
        datastore.close()
    if request.param == "distributed":
        drop_postgres_tables()
