"""Personal data encrypted at rest, with one data key per user (crypto-shredding).

Writing, each personal field of an event (`domain.catalog.PERSONAL_FIELDS`) is replaced by
`"pii:1:" + base64(nonce ‖ AES-GCM(data key, JSON value))`, bound to its stream and field. The
stream's data key is made with its first event and stored wrapped (AES-GCM under a key derived
from the deployment's secret) in the `<events>_data_keys` table, beside the log but not in it.
Reading, the recorders open those fields again; once the key is gone — deleted in the same
transaction that appends `UserPersonalDataErased` — they read as null. The stored bytes never
change, so the hash chain still verifies and the history still replays after an erasure.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eventsourcing.persistence import IntegrityError, StoredEvent

from eventkeep.domain.catalog import PERSONAL_FIELDS

PII_SECRET = "PII_SECRET"  # the persistence environment's key for the deployment secret
MARK = "pii:1:"
NONCE = 12
E = TypeVar("E", bound=StoredEvent)


class DataKeyTable(Protocol):
    """Where a store keeps the wrapped data keys, by stream id."""

    def fetch(self, stream_ids: Iterable[str]) -> dict[str, bytes]: ...

    def add_missing(self, wrapped: dict[str, bytes]) -> None: ...


class PersonalData:
    def __init__(self, secret: bytes, keys: DataKeyTable) -> None:
        kek = HKDF(hashes.SHA256(), 32, salt=None, info=b"eventkeep data keys").derive(secret)
        self._kek = AESGCM(kek)
        self._keys = keys

    def seal(self, events: Sequence[E]) -> list[E]:
        """Events with their personal fields encrypted; a user's first event makes its key."""
        personal = [e for e in events if e.topic in PERSONAL_FIELDS]
        if not personal:
            return list(events)
        keys = self._keys_of(personal, create_for_new_streams=True)

        def sealed(event: E, key: AESGCM) -> E:
            return replace(event, state=_map_fields(event, lambda f, v: _seal(key, event, f, v)))

        return [
            sealed(e, keys[str(e.originator_id)]) if e.topic in PERSONAL_FIELDS else e
            for e in events
        ]

    def open(self, events: Sequence[E]) -> list[E]:
        """Events with their personal fields readable, or null where the key was erased."""
        personal = [e for e in events if e.topic in PERSONAL_FIELDS]
        if not personal:
            return list(events)
        keys = self._keys_of(personal, create_for_new_streams=False)

        def opened(event: E) -> E:
            key = keys.get(str(event.originator_id))
            return replace(event, state=_map_fields(event, lambda f, v: _open(key, event, f, v)))

        return [opened(e) if e.topic in PERSONAL_FIELDS else e for e in events]

    def _keys_of(self, events: Sequence[StoredEvent], *, create_for_new_streams: bool) -> dict:
        ids = {str(e.originator_id) for e in events}
        wrapped = self._keys.fetch(ids)
        if create_for_new_streams:
            new = {str(e.originator_id) for e in events if e.originator_version == 1} - set(wrapped)
            if new:
                self._keys.add_missing({i: self._wrap(os.urandom(32), i) for i in new})
                wrapped = self._keys.fetch(ids)  # another process may have won the insert
            if missing := ids - set(wrapped):
                raise IntegrityError(f"no data key for {sorted(missing)}: personal data erased")
        return {i: AESGCM(self._unwrap(w, i)) for i, w in wrapped.items()}

    def _wrap(self, key: bytes, stream_id: str) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._kek.encrypt(nonce, key, stream_id.encode())

    def _unwrap(self, wrapped: bytes, stream_id: str) -> bytes:
        return self._kek.decrypt(wrapped[:NONCE], wrapped[NONCE:], stream_id.encode())


def _map_fields(event: StoredEvent, change: Callable[[str, Any], Any]) -> bytes:
    data = orjson.loads(event.state)
    for name in PERSONAL_FIELDS[event.topic] & data.keys():
        data[name] = change(name, data[name])
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def _context(event: StoredEvent, field: str) -> bytes:
    return f"{event.originator_id}/{field}".encode()


def _seal(key: AESGCM, event: StoredEvent, field: str, value: Any) -> str:
    nonce = os.urandom(NONCE)
    sealed = key.encrypt(nonce, orjson.dumps(value), _context(event, field))
    return MARK + base64.b64encode(nonce + sealed).decode()


def _open(key: AESGCM | None, event: StoredEvent, field: str, value: Any) -> Any:
    if not (isinstance(value, str) and value.startswith(MARK)):
        return value  # stored before encryption was configured
    if key is None:
        return None
    raw = base64.b64decode(value[len(MARK) :])
    return orjson.loads(key.decrypt(raw[:NONCE], raw[NONCE:], _context(event, field)))
