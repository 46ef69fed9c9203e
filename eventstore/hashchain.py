"""The hash chain that makes stored history tamper-evident.

Each event's hash is HMAC-SHA256, keyed with `chain_key` (derived from the deployment secret,
which no database role ever sees), over the previous event's hash and this event's canonical
bytes; the first event links to `GENESIS`. Without the key nobody — not the database's owner —
can recompute a valid chain after changing an event. Events written before the chain was keyed
carry plain SHA-256 hashes (the same bytes, no key); verification accepts them only as the
log's leading part that the first checkpoint recorded (`eventstore.checkpoints`).
Canonical bytes are the length-prefixed fields below, so no
field can bleed into its neighbour. Metadata is hashed as sorted-key JSON because the database
may re-format it (PostgreSQL `jsonb`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from eventkeep.eventstore.records import LoggedEvent

GENESIS = bytes(32)


def chain_key(secret: bytes) -> bytes:
    """The chain's HMAC key, derived from the deployment secret with a label of its own."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"eventkeep hash chain v1"
    ).derive(secret)


def canonical_time(moment: datetime) -> str:
    if moment.tzinfo is not UTC:  # converting a time already in UTC makes a copy for nothing
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def canonical_metadata(metadata: Mapping[str, Any] | bytes) -> bytes:
    """Sorted-key JSON (given as bytes: canonical already, e.g. one append's, made once)."""
    if isinstance(metadata, bytes):
        return metadata
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
    metadata: Mapping[str, Any] | bytes,
    key: bytes | None = None,
) -> bytes:
    """The event's chain hash: HMAC-SHA256 with `key`; without one, the unkeyed SHA-256 of
    history written before the chain was keyed. `metadata` may be its `canonical_metadata`."""
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
    # The key's padded state is made once per key (`_keyed`), not per event.
    return _digest(_keyed(key) if key is not None else None, prev_hash + _framed(*fields))


_PREFIX = struct.Struct(">Q")  # 8-byte big-endian length before each field


class ChainLinker:
    """`event_hash` for the events of one batch, one after the other: the same bytes, with
    the framed fields that events repeat (an append's stream, types, recorded time and
    metadata) made once per distinct value instead of once per event. `stream_id` must be
    text and `metadata` its `canonical_metadata` (as a batch's planning has them)."""

    def __init__(self, key: bytes | None) -> None:
        self._keyed = _keyed(key) if key is not None else None
        self._streams: dict[tuple[str, str], bytes] = {}
        self._kinds: dict[tuple[str, int, datetime], bytes] = {}
        self._metadata: dict[bytes, bytes] = {}

    def hash(
        self,
        prev_hash: bytes,
        *,
        position: int,
        stream_id: str,
        stream_type: str,
        stream_version: int,
        event_type: str,
        schema_version: int,
        recorded_at: datetime,
        data: bytes,
        metadata: bytes,
    ) -> bytes:
        stream = self._streams.get((stream_id, stream_type))
        if stream is None:
            stream = self._streams[(stream_id, stream_type)] = _framed(
                stream_id.encode(), stream_type.encode()
            )
        # Equal datetimes are the same instant, whose canonical (UTC) text is the same.
        kind = self._kinds.get((event_type, schema_version, recorded_at))
        if kind is None:
            kind = self._kinds[(event_type, schema_version, recorded_at)] = _framed(
                event_type.encode(),
                str(schema_version).encode(),
                canonical_time(recorded_at).encode(),
            )
        framed_metadata = self._metadata.get(metadata)
        if framed_metadata is None:
            framed_metadata = self._metadata[metadata] = _framed(metadata)
        # The fields events do not repeat framed in place: one join for the whole message.
        number, version = str(position).encode(), str(stream_version).encode()
        message = b"".join(
            (
                prev_hash,
                _PREFIX.pack(len(number)),
                number,
                stream,
                _PREFIX.pack(len(version)),
                version,
                kind,
                _PREFIX.pack(len(data)),
                data,
                framed_metadata,
            )
        )
        return _digest(self._keyed, message)


def _digest(keyed: hmac.HMAC | None, message: bytes) -> bytes:
    """HMAC-SHA256 from `keyed` (the key's state, copied), else the unkeyed SHA-256."""
    if keyed is None:
        return hashlib.sha256(message).digest()
    digest = keyed.copy()
    digest.update(message)
    return digest.digest()


def _framed(*fields: bytes) -> bytes:
    return b"".join([_PREFIX.pack(len(field)) + field for field in fields])


@functools.lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def recomputed_hash(event: LoggedEvent, prev_hash: bytes, key: bytes | None = None) -> bytes:
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
        key=key,
    )
