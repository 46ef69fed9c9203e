"""The SQLite store's lookups of a batch (taken stream versions, claims, idempotency keys)
search the tables' indexes: a scan would cost every append the size of the whole log."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.sqlite import SQLiteDatastore

from eventkeep.eventstore.recorder import ColumnType
from eventkeep.eventstore.sqlite import SQLiteApplicationRecorder


@pytest.mark.parametrize(
    ("table", "columns", "types", "values"),
    [
        ("stored_events", ("stream_id", "stream_version"), ("uuid", "bigint"), [("a", 1)] * 3),
        ("stored_events_claims", ("scope", "key"), ("text", "text"), [("email", "a")] * 3),
        ("stored_events_idempotency", ("key",), ("text",), [("k",)] * 3),
        ("stored_events_data_keys", ("stream_id",), ("uuid",), [("a",)] * 3),
    ],
)
def test_batch_lookups_search_an_index(
    tmp_path: Path,
    table: str,
    columns: tuple[str, ...],
    types: tuple[ColumnType, ...],
    values: list[tuple[Any, ...]],
) -> None:
    datastore = SQLiteDatastore(str(tmp_path / "events.db"))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    wanted, params = recorder.sql.one_of(columns, types, values)
    query = f"SELECT * FROM {table} WHERE {wanted}".replace("%s", "?")
    with closing(sqlite3.connect(tmp_path / "events.db")) as connection:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}", params)]
    recorder.close()
    datastore.close()
    assert any(step.startswith(f"SEARCH {table}") for step in plan), plan
    assert f"SCAN {table}" not in plan
