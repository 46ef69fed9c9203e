"""The hash chain that makes stored history tamper-evident.

Each event's hash is SHA-256 over the previous event's hash and this event's canonical bytes;
the first event links to `GENESIS`. Canonical bytes are the length-prefixed fields below, so no
field can bleed into its neighbour. Metadata is hashed as sorted-key JSON because the database
may re-format it (PostgreSQL `jsonb`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from eventkeep.eventstore.records import LoggedEvent

GENESIS = bytes(32)


def canonical_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_metadata(metadata: Mapping[str, Any]) -> bytes:
    return orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS)


def event_hash(
    prev_hash: bytes,
    *,
    position: int,
    stream_id: UUID | str,
    stream_type: str,
    stream_version: int,
    event_type: str,
    schema_version: int,
    recorded_at: datetime,
    data: bytes,
    metadata: Mapping[str, Any],
) -> bytes:
    fields = (
        str(position).encode(),
        str(stream_id).encode(),
        stream_type.encode(),
        str(stream_version).encode(),
        event_type.encode(),
        str(schema_version).encode(),
        canonical_time(recorded_at).encode(),
        data,
        canonical_metadata(metadata),
    )
    framed = b"".join(_PREFIX.pack(len(field)) + field for field in fields)
    return hashlib.sha256(prev_hash + framed).digest()


_PREFIX = struct.Struct(">Q")  # 8-byte big-endian length before each field


def recomputed_hash(event: LoggedEvent, prev_hash: bytes) -> bytes:
    """The hash a logged event (as stored: not decrypted) must carry after `prev_hash`: what
    verification compares with the stored one."""
    return event_hash(
        prev_hash,
        position=event.position,
        stream_id=event.originator_id,
        stream_type=event.stream_type,
        stream_version=event.originator_version,
        event_type=event.event_type,
        schema_version=event.schema_version,
        recorded_at=event.recorded_at,
        data=event.state,
        metadata=event.metadata,
    )
