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
from tests.eventstore.stores import postgres_url

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
