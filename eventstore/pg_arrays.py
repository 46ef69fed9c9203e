"""A batch's arrays in PostgreSQL's binary array format, encoded in one pass per array.

The append function takes a batch as one array per column (`recorder._append_arguments`).
psycopg's list dumper is written in Python and encodes element by element (a dumper looked
up, called and framed for each); for a batch of 100 events that was about half of the
committer's CPU. Here each array is framed at once: fixed-size elements with one
`struct.pack`, the others with one `bytes.join`. Only the element types the append function
takes are encoded; any other value is left to psycopg (`encoded`).

The format (PostgreSQL's `array_send`): dimensions (1), a has-nulls flag, the element type's
oid, the length and lower bound (1), then each element as its byte length (-1: NULL) and its
bytes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

_HEADER = struct.Struct(">iiIii")
_LENGTH = struct.Struct(">i")
_NULL = _LENGTH.pack(-1)
_UUID_LENGTH = _LENGTH.pack(16)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # PostgreSQL's timestamps count from here
_MICROSECOND = timedelta(microseconds=1)

# SQL array type -> (element oid, array oid)
_OIDS = {
    "bigint[]": (20, 1016),
    "int[]": (23, 1007),
    "text[]": (25, 1009),
    "bytea[]": (17, 1001),
    "uuid[]": (2950, 2951),
    "timestamptz[]": (1184, 1185),
}


class EncodedArray(bytes):
    """An array in binary, ready to send (`encoded`); `oid`: its array type's."""

    oid: int


class EncodedArrayDumper(Dumper):
    """Sends an `EncodedArray` as it is, typed with its own oid."""

    format = Format.BINARY

    def get_key(self, obj: Any, format: Any) -> Any:
        return (type(obj), obj.oid)

    def upgrade(self, obj: Any, format: Any) -> Dumper:
        dumper = EncodedArrayDumper(type(obj), self.connection)
        dumper.oid = obj.oid
        return dumper

    def dump(self, obj: Any) -> bytes:
        return cast(bytes, obj)  # an EncodedArray is its bytes


def register(adapters: AdaptersMap) -> None:
    """Lets `adapters` (a connection's) send `EncodedArray`s."""
    adapters.register_dumper(EncodedArray, EncodedArrayDumper)


def encoded(type: str, values: Any) -> Any:
    """`values` (a list for an array `type` this module encodes) as an `EncodedArray`; any
    other value, and a list holding an element of an unexpected kind, as it was (psycopg
    encodes it)."""
    oids = _OIDS.get(type)
    if oids is None or not isinstance(values, list) or not values:
        return values
    try:
        elements, nulls = _ELEMENTS[type](values)
    except (TypeError, ValueError, AttributeError, struct.error, OverflowError):
        return values
    array = EncodedArray(_HEADER.pack(1, nulls, oids[0], len(values), 1) + elements)
    array.oid = oids[1]
    return array


@functools.lru_cache(maxsize=64)
def _fixed(code: str, count: int) -> struct.Struct:
    """`count` elements of one fixed-size kind, each after its length."""
    return struct.Struct(">" + ("i" + code) * count)


def _integers(code: str, size: int) -> Any:
    def encode(values: Sequence[int]) -> tuple[bytes, int]:
        framed: list[int] = []
        for value in values:
            if type(value) is not int:  # None, bool, a float: psycopg decides
                raise TypeError(value)
            framed += (size, value)
        return _fixed(code, len(values)).pack(*framed), 0

    return encode


def _variable(values: Sequence[bytes | None]) -> tuple[bytes, int]:
    parts: list[bytes] = []
    nulls = 0
    for value in values:
        if value is None:
            parts.append(_NULL)
            nulls = 1
        else:
            parts += (_LENGTH.pack(len(value)), value)
    return b"".join(parts), nulls


def _bytea(values: Sequence[Any]) -> tuple[bytes, int]:
    for value in values:
        if value is not None and not isinstance(value, bytes):
            raise TypeError(value)
    return _variable(values)


def _text(values: Sequence[Any]) -> tuple[bytes, int]:
    framed: dict[str, bytes] = {}  # a batch repeats its types and metadata
    parts: list[bytes] = []
    nulls = 0
    for value in values:
        if value is None:
            parts.append(_NULL)
            nulls = 1
            continue
        element = framed.get(value)
        if element is None:
            encoded = value.encode()
            element = framed[value] = _LENGTH.pack(len(encoded)) + encoded
        parts.append(element)
    return b"".join(parts), nulls


def _uuid(values: Sequence[Any]) -> tuple[bytes, int]:
    parts: list[bytes] = []
    nulls = 0
    for value in values:
        if value is None:
            parts.append(_NULL)
            nulls = 1
        elif isinstance(value, UUID):
            parts += (_UUID_LENGTH, value.bytes)
        else:
            raise TypeError(value)
    return b"".join(parts), nulls


def _timestamptz(values: Sequence[Any]) -> tuple[bytes, int]:
    seen: dict[datetime, int] = {}  # a batch's events mostly share their recorded time
    micros: list[int] = []
    for value in values:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise TypeError(value)  # a naive time: psycopg's rules apply
        count = seen.get(value)
        if count is None:
            count = seen[value] = (value - _EPOCH) // _MICROSECOND
        micros.append(count)
    return _integers("q", 8)(micros)


_ELEMENTS = {
    "bigint[]": _integers("q", 8),
    "int[]": _integers("i", 4),
    "text[]": _text,
    "bytea[]": _bytea,
    "uuid[]": _uuid,
    "timestamptz[]": _timestamptz,
}
