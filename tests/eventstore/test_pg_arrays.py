"""A batch's arrays are framed in PostgreSQL's binary format in one pass (issue 13: psycopg's
list dumper, element by element in Python, was about half the committer's CPU for a batch of
100 events). The server must read exactly what psycopg's own encoding gives it, NULL
elements, non-ASCII text and times in any zone included; a value of a kind not expected is
left to psycopg. PostgreSQL only (SQLite takes no arrays)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from eventkeep.eventstore.pg_arrays import EncodedArray, encoded, register
from eventkeep.eventstore.postgres import PostgresApplicationRecorder
from tests.eventstore.stores import drop_postgres_tables, postgres_datastore, postgres_url
from tests.eventstore.test_global_log import events_for

CASES: list[tuple[str, list[Any]]] = [
    ("bigint[]", [1, -1, 0, 2**62, -(2**63), 123_456_789_012]),
    ("int[]", [1, -5, 2**31 - 1, -(2**31)]),
    ("text[]", ["a", "é ü ✓ 日本", "", 'with,comma and "quotes"', None, "{}"]),
    ("bytea[]", [b"\x00\x01\xff", b"", None, b"x" * 5000]),
    ("uuid[]", [uuid4(), None, uuid4()]),
    (
        "timestamptz[]",
        [
            datetime.now(UTC),
            datetime(1990, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            datetime(2031, 7, 9, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=5.5))),
            datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        ],
    ),
]


@pytest.fixture
def connection() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_url(), autocommit=True) as connection:
        register(connection.adapters)
        yield connection


@pytest.mark.parametrize(("type", "values"), CASES, ids=[t for t, _ in CASES])
def test_the_server_reads_what_psycopg_would_send(
    connection: psycopg.Connection[Any], type: str, values: list[Any]
) -> None:
    ours = encoded(type, values)
    assert isinstance(ours, EncodedArray)
    row = connection.execute(
        f"SELECT %b::{type}::text, %b::{type}::text, %b::{type} = %b::{type}",  # type: ignore[arg-type]
        (ours, values, ours, values),
    ).fetchone()
    assert row is not None
    assert row[0] == row[1]
    assert row[2] is True


@pytest.mark.parametrize(
    ("type", "values"),
    [
        ("bigint[]", [1, True]),  # a bool: psycopg's rules
        ("bigint[]", [1, None]),
        ("bigint[]", [2**64]),  # out of range: psycopg's error
        ("timestamptz[]", [datetime(2026, 1, 1)]),  # naive: the session's zone decides
        ("uuid[]", ["not a UUID object"]),
        ("text[]", [b"bytes"]),
        ("bytea[]", ["text"]),
        ("bigint[]", []),
        ("numeric[]", [1]),
    ],
)
def test_a_value_of_another_kind_is_left_to_psycopg(type: str, values: list[Any]) -> None:
    assert encoded(type, values) is values


@pytest.fixture
def recorder() -> Iterator[PostgresApplicationRecorder]:
    drop_postgres_tables()
    datastore = postgres_datastore(pool_size=2, max_overflow=2)
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    yield recorder
    recorder.close()
    datastore.close()
    drop_postgres_tables()


def test_a_batch_in_one_trip_sends_its_arrays_framed(
    recorder: PostgresApplicationRecorder,
) -> None:
    """The committer's statement takes the framed arrays: its parameters are typed as the
    append function's own (psycopg's list dumper types a list of small numbers smallint[])."""
    for _ in range(3):  # the first batch is planned under the lock; the next in one trip
        recorder.insert_events(events_for(uuid4(), 1, 2), metadata={"actor": "test"})
    connection = recorder.sql._batch_connection  # type: ignore[attr-defined]
    rows = connection.execute(
        "SELECT parameter_types::text[] FROM pg_prepared_statements"
        " WHERE statement LIKE '%FROM pg_advisory_xact_lock(%'"  # the one-trip statement
    ).fetchall()
    assert rows, "the one-trip statement is prepared"
    for (types,) in rows:
        assert types[3:14] == [
            "bigint[]", "uuid[]", "bigint[]", "text[]", "text[]", "integer[]",
            "timestamp with time zone[]", "bytea[]", "text[]", "bytea[]", "bytea[]",
        ]  # fmt: skip
