"""Personal data encrypted at rest, with one data key per user (crypto-shredding).

The store is told which fields are personal and which event erases them (`PersonalFields`,
from the composition root through the persistence environment: `PII_FIELDS`,
`PII_ERASING_EVENT`); it knows no catalog. Writing, each personal field of an event is replaced by
`"pii:1:" + base64(nonce ‖ AES-GCM(data key, JSON value))`, bound to its stream and field. The
stream's data key is made with its first event and stored wrapped (AES-GCM under a key derived
from the deployment's secret) in the `<events>_data_keys` table, beside the log but not in it.
Reading, the recorders open those fields again; once the key is gone — deleted in the same
transaction that appends the erasing event — they read as null. The stored bytes never
change, so the hash chain still verifies and the history still replays after an erasure.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eventsourcing.persistence import IntegrityError, StoredEvent

PII_SECRET = "PII_SECRET"  # the persistence environment's key for the deployment secret
PII_FIELDS = "PII_FIELDS"  # … for the personal fields: JSON {event type: [field, …]}
PII_ERASING_EVENT = "PII_ERASING_EVENT"  # … for the event type that erases a stream's data
MARK = "pii:1:"
NONCE = 12
E = TypeVar("E", bound=StoredEvent)


class DataKeyTable(Protocol):
    """Where a store keeps the wrapped data keys, by stream id."""

    def fetch(self, stream_ids: Iterable[str]) -> dict[str, bytes]: ...

    def add_missing(self, wrapped: dict[str, bytes]) -> None: ...


@dataclass(frozen=True)
class PersonalFields:
    """Which fields of which event types are personal, and which event type erases them."""

    fields: Mapping[str, frozenset[str]]  # event type -> its personal fields
    erasing_event: str

    def to_env(self) -> dict[str, str]:
        """The persistence environment's entries that tell a store about them."""
        fields = {event_type: sorted(names) for event_type, names in self.fields.items()}
        return {PII_FIELDS: orjson.dumps(fields).decode(), PII_ERASING_EVENT: self.erasing_event}

    @classmethod
    def from_env(cls, env: Any) -> PersonalFields:
        fields, erasing_event = env.get(PII_FIELDS), env.get(PII_ERASING_EVENT)
        if not fields or not erasing_event:
            raise ValueError(
                f"{PII_SECRET} is set but {PII_FIELDS} or {PII_ERASING_EVENT} is not: the store "
                "cannot tell which fields to encrypt"
            )
        names = orjson.loads(fields)
        return cls({t: frozenset(n) for t, n in names.items()}, erasing_event)


class PersonalData:
    def __init__(self, secret: bytes, keys: DataKeyTable, personal: PersonalFields) -> None:
        kek = HKDF(hashes.SHA256(), 32, salt=None, info=b"eventkeep data keys").derive(secret)
        self._kek = AESGCM(kek)
        self._keys = keys
        self._fields = personal.fields
        self.erasing_event = personal.erasing_event

    def seal(self, events: Sequence[E]) -> list[E]:
        """Events with their personal fields encrypted; a user's first event makes its key."""
        personal = [e for e in events if e.topic in self._fields]
        if not personal:
            return list(events)
        keys = self._keys_of(personal, create_for_new_streams=True)

        def sealed(event: E, key: AESGCM) -> E:
            return replace(
                event, state=self._map_fields(event, lambda f, v: _seal(key, event, f, v))
            )

        return [
            sealed(e, keys[str(e.originator_id)]) if e.topic in self._fields else e for e in events
        ]

    def open(self, events: Sequence[E]) -> list[E]:
        """Events with their personal fields readable, or null where the key was erased."""
        personal = [e for e in events if e.topic in self._fields]
        if not personal:
            return list(events)
        keys = self._keys_of(personal, create_for_new_streams=False)

        def opened(event: E) -> E:
            key = keys.get(str(event.originator_id))
            return replace(
                event, state=self._map_fields(event, lambda f, v: _open(key, event, f, v))
            )

        return [opened(e) if e.topic in self._fields else e for e in events]

    def _map_fields(self, event: StoredEvent, change: Callable[[str, Any], Any]) -> bytes:
        data = orjson.loads(event.state)
        for name in self._fields[event.topic] & data.keys():
            data[name] = change(name, data[name])
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

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
