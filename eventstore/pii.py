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

A field may be sealed under another stream's key (`PersonalFields.key_owners`: the event's data
field naming that stream), e.g. an order's cancellation reason under its user's key, so that
erasing the user makes it unreadable too. A stream's key is made with the first event that
needs it, unless the stream was erased (its erasing event is in the log): then an event of its
own is refused (`IntegrityError`) and a field of another stream's event under its key is
stored as null — nothing about an erased person is written again.

A stream of a keyed type (`PersonalFields.keyed_streams`: the types whose own events have
personal fields, e.g. a product, whose later stock adjustments seal their reason) gets its key
with its first event, made here and stored by that event's own batch (`Sealed.new_keys`,
written in the append's transaction: `eventstore.recorder`), so no query precedes the append:
a new stream has no key and cannot have been erased. The writer keeps the keys it made or
fetched for sealing, so a later event of the stream asks nothing either; only a stream it
never saw (made by another process, or before it started) costs one fetch of its key.

The relay publishes events as stored (sealed); a projector opens them with `open_envelopes`,
keeping the keys of the streams it opened (`OpeningKeys`: dropped when it sees their erasure).
"""

from __future__ import annotations

import base64
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eventsourcing.persistence import IntegrityError, StoredEvent

from eventkeep.eventstore.records import evolved

PII_SECRET = "PII_SECRET"  # the persistence environment's key for the deployment secret
PII_FIELDS = "PII_FIELDS"  # … for the personal fields: JSON {event type: [field, …]}
PII_ERASING_EVENT = "PII_ERASING_EVENT"  # … for the event type that erases a stream's data
PII_KEY_OWNERS = "PII_KEY_OWNERS"  # … for {event type: data field naming the key's stream}
PII_KEYED_STREAMS = "PII_KEYED_STREAMS"  # … for the stream types keyed at their first event
MARK = "pii:1:"
NONCE = 12
# Data keys a writer keeps for sealing, so that an append of a stream it sealed for before
# costs no query (the write path's promise: no round trip before deciding).
SEALING_KEYS_KEPT = 50_000
# Data keys a feed's reader keeps for opening (`OpeningKeys`).
OPENING_KEYS_KEPT = 50_000
E = TypeVar("E", bound=StoredEvent)


class DataKeyTable(Protocol):
    """Where a store keeps the wrapped data keys, by stream id."""

    def fetch(self, stream_ids: Iterable[str]) -> dict[str, bytes]: ...

    def add_missing(self, wrapped: dict[str, bytes]) -> None: ...

    def erased(self, stream_ids: Iterable[str], erasing_event: str) -> set[str]:
        """Those of the streams whose log holds the erasing event."""
        ...


@dataclass(frozen=True)
class PersonalFields:
    """Which fields of which event types are personal, and which event type erases them."""

    fields: Mapping[str, frozenset[str]]  # event type -> its personal fields
    erasing_event: str
    # event type -> the data field naming the stream whose key seals its fields (default: its own)
    key_owners: Mapping[str, str] = field(default_factory=dict)
    # stream types whose streams get their key with their first event (see the module)
    keyed_streams: frozenset[str] = frozenset()

    def to_env(self) -> dict[str, str]:
        """The persistence environment's entries that tell a store about them."""
        fields = {event_type: sorted(names) for event_type, names in self.fields.items()}
        return {
            PII_FIELDS: orjson.dumps(fields).decode(),
            PII_ERASING_EVENT: self.erasing_event,
            PII_KEY_OWNERS: orjson.dumps(dict(self.key_owners)).decode(),
            PII_KEYED_STREAMS: orjson.dumps(sorted(self.keyed_streams)).decode(),
        }

    @classmethod
    def from_env(cls, env: Any) -> PersonalFields:
        fields, erasing_event = env.get(PII_FIELDS), env.get(PII_ERASING_EVENT)
        if not fields or not erasing_event:
            raise ValueError(
                f"{PII_SECRET} is set but {PII_FIELDS} or {PII_ERASING_EVENT} is not: the store "
                "cannot tell which fields to encrypt"
            )
        names = orjson.loads(fields)
        owners = orjson.loads(env.get(PII_KEY_OWNERS) or "{}")
        keyed = frozenset(orjson.loads(env.get(PII_KEYED_STREAMS) or "[]"))
        return cls({t: frozenset(n) for t, n in names.items()}, erasing_event, owners, keyed)


class KeysNotKept(Exception):
    """Sealing would ask the data-key table (`PersonalData.seal(…, query=False)`)."""


@dataclass(frozen=True)
class Sealed(Generic[E]):
    """An append's events sealed, and the data keys made for them: stored (wrapped) by the
    same transaction as the events, or not at all."""

    events: list[E]
    new_keys: dict[str, bytes] = field(default_factory=dict)  # stream id -> wrapped key


class PersonalData:
    def __init__(self, secret: bytes, keys: DataKeyTable, personal: PersonalFields) -> None:
        kek = HKDF(hashes.SHA256(), 32, salt=None, info=b"eventkeep data keys").derive(secret)
        self._kek = AESGCM(kek)
        self._keys = keys
        self._fields = personal.fields
        self._owners = personal.key_owners
        self._keyed_streams = personal.keyed_streams
        self.erasing_event = personal.erasing_event
        # Only for sealing, never for opening: a key erased meanwhile by another process seals
        # what nobody can open any more (as good as erased); opening asks the table, unless a
        # feed's reader, who sees each erasure in order, keeps keys (`OpeningKeys`).
        self._sealing: OrderedDict[str, AESGCM] = OrderedDict()
        self._sealing_lock = threading.Lock()

    def seal(self, events: Sequence[E], *, query: bool = True) -> Sealed[E]:
        """Events with their personal fields encrypted, and the keys made for new streams
        (see the module); a key is made for each other stream that needs one and has none
        (an erased stream's own event is refused). `query=False`: raises `KeysNotKept`,
        having done nothing, when a key this writer does not keep is needed (an event loop
        then seals in a worker thread)."""
        sealed = self._sealed(events, query)
        # After sealing: a stream made and erased in one append keeps no key here either.
        if erasures := {str(e.originator_id) for e in events if e.topic == self.erasing_event}:
            self.forget(erasures)
        return sealed

    def _sealed(self, events: Sequence[E], query: bool) -> Sealed[E]:
        fields = self._fields
        personal = {i: orjson.loads(e.state) for i, e in enumerate(events) if e.topic in fields}
        owners = {
            i: self._owner(events[i].topic, str(events[i].originator_id), data)
            for i, data in personal.items()
        }
        # A stream's first event: it has no key and cannot follow an erasure.
        new = {
            str(e.originator_id)
            for i, e in enumerate(events)
            if e.originator_version == 1
            and (
                getattr(e, "stream_type", None) in self._keyed_streams
                or owners.get(i) == str(e.originator_id)
            )
        }
        wanted = {o for o in owners.values() if o is not None}
        if not query and len(self._kept(wanted - new)) < len(wanted - new):
            raise KeysNotKept(wanted - new)
        made, new_keys = self._new_keys(new)
        if not personal:
            return Sealed(list(events), new_keys)
        keys = made | self._keys_for_sealing(wanted - made.keys())
        sealed = list(events)
        for i, data in personal.items():
            event, owner = events[i], owners[i]
            stream = str(event.originator_id)
            if owner == stream and owner not in keys:
                raise IntegrityError(f"no data key for {owner}: personal data erased")
            if owner is None:
                continue  # an older schema naming no owner: stored as written (docs/events.md)
            key = keys.get(owner)
            data = self._map_fields(event.topic, data, partial(_seal, key, stream))
            sealed[i] = evolved(event, state=orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
        return Sealed(sealed, new_keys)

    def forget(self, streams: Iterable[str]) -> None:
        """Drops the kept sealing keys of `streams` (erased, or made for an append that was
        not stored): the next seal asks the table."""
        with self._sealing_lock:
            for stream in streams:
                self._sealing.pop(stream, None)

    def open(self, events: Sequence[E]) -> list[E]:
        """Events with their personal fields readable, or null where the key was erased."""
        return self._open(events, {})

    def open_loaded(self, events: Sequence[E], stream: str, wrapped: bytes | None) -> list[E]:
        """`open` for the write path's load of `stream`, which read the stream's wrapped data
        key with its events (one statement): that key is not fetched again, and it is kept for
        sealing the stream's next event, as a key fetched for sealing is (a key erased
        meanwhile by another process seals what nobody can open: as good as erased). A stream
        found without a key keeps none either: its next seal asks the table (and refuses an
        erased stream's own event)."""
        if wrapped is None:
            self.forget([stream])
            return self._open(events, {})
        known = self._unwrapped({stream: wrapped})
        self._keep(known)
        return self._open(events, known)

    def _open(self, events: Sequence[E], known: Mapping[str, AESGCM]) -> list[E]:
        personal = [e for e in events if e.topic in self._fields]
        if not personal:
            return list(events)
        opened = iter(
            self._opened(
                [(e.topic, str(e.originator_id), orjson.loads(e.state)) for e in personal], known
            )
        )
        return [
            evolved(e, state=orjson.dumps(next(opened), option=orjson.OPT_SORT_KEYS))
            if e.topic in self._fields
            else e
            for e in events
        ]

    def open_envelopes(
        self,
        envelopes: Sequence[dict[str, Any]],
        kept: OpeningKeys | None = None,
        *,
        only: Container[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Export envelopes (as the relay publishes them, sealed) with their personal fields
        readable, or null where the key was erased; `kept`: a feed reader's kept keys
        (`OpeningKeys`), else every key is asked of the table; `only`: the event types to
        open (what the reader reads), the others left sealed as published."""
        # Only the events with personal fields are visited: the bulk readers of the log open
        # pages of thousands of events, most of which have none (and a page of the orders'
        # read models, which read none, is not even looked through).
        answer = list(envelopes)
        types = self._fields.keys() if only is None else {t for t in self._fields if t in only}
        if not types:
            return answer
        personal = [(i, e) for i, e in enumerate(answer) if e["event_type"] in types]
        events = [(e["event_type"], e["stream_id"], e["data"]) for _, e in personal]
        opened = self._opened(events, {}, kept)
        for (i, e), data in zip(personal, opened, strict=True):
            if data is not None:
                answer[i] = {**e, "data": data}
        return answer

    def _opened(
        self,
        events: Sequence[tuple[str, str, dict[str, Any]]],
        known: Mapping[str, AESGCM],
        kept: OpeningKeys | None = None,
    ) -> list[dict | None]:
        """Each event's data opened (None: it has no personal field): with the keys `known`,
        then those `kept` keeps, else fetched."""
        owners = [
            self._owner(topic, stream, data) if topic in self._fields else None
            for topic, stream, data in events
        ]
        if kept is not None:
            own = {o for (_, stream, _), o in zip(events, owners, strict=True) if o == stream}
            keys = kept.keys_for({o for o in owners if o is not None} - known.keys(), own)
        else:
            keys = self.fetched({o for o in owners if o is not None} - known.keys())
        keys = {**known, **keys}
        return [
            self._map_fields(topic, data, partial(_open, keys.get(owner or ""), stream))
            if topic in self._fields
            else None
            for (topic, stream, data), owner in zip(events, owners, strict=True)
        ]

    def fetched(self, streams: set[str]) -> dict[str, AESGCM]:
        """The data keys of `streams` the table holds (an erased stream's is gone)."""
        return self._unwrapped(self._keys.fetch(streams)) if streams else {}

    def _owner(self, event_type: str, stream_id: str, data: Mapping[str, Any]) -> str | None:
        """The stream whose key seals the event's personal fields (None: no stream named)."""
        name = self._owners.get(event_type)
        if name is None:
            return stream_id
        owner = data.get(name)
        return str(owner) if owner else None

    def _map_fields(
        self, event_type: str, data: dict[str, Any], change: Callable[[str, Any], Any]
    ) -> dict[str, Any]:
        changed = dict(data)
        for name in self._fields[event_type] & data.keys():
            changed[name] = change(name, data[name])
        return changed

    def _new_keys(self, streams: set[str]) -> tuple[dict[str, AESGCM], dict[str, bytes]]:
        """Keys made for new streams, and the same wrapped (to be stored with the append).
        Kept for sealing at once: a later event of the stream may be sealed before this
        append commits (an import pipelines its appends); forgotten when it is refused
        (`forget`). A stream already kept is left alone: it has its key."""
        if not streams:
            return {}, {}
        with self._sealing_lock:
            # Not `streams - self._sealing.keys()`: a set minus a dict's keys walks every key
            # kept (up to SEALING_KEYS_KEPT), about 1 ms per append at 50k.
            streams = {stream for stream in streams if stream not in self._sealing}
        raw = {stream: os.urandom(32) for stream in streams}
        made = {stream: AESGCM(key) for stream, key in raw.items()}
        self._keep(made)
        return made, {stream: self._wrap(key, stream) for stream, key in raw.items()}

    def _kept(self, streams: set[str]) -> dict[str, AESGCM]:
        with self._sealing_lock:
            kept = {s: self._sealing[s] for s in streams if s in self._sealing}
            for stream in kept:
                self._sealing.move_to_end(stream)
        return kept

    def _keep(self, keys: Mapping[str, AESGCM]) -> None:
        with self._sealing_lock:
            self._sealing.update(keys)
            while len(self._sealing) > SEALING_KEYS_KEPT:
                self._sealing.popitem(last=False)

    def _keys_for_sealing(self, streams: set[str]) -> dict[str, AESGCM]:
        """The keys of `streams`, made for those without one that were not erased; kept ones
        ask no query."""
        kept = self._kept(streams)
        if len(kept) == len(streams):  # the usual case: a stream this writer sealed for before
            return kept
        streams = streams - set(kept)
        wrapped = self._keys.fetch(streams) if streams else {}
        if missing := streams - set(wrapped):
            erased = self._keys.erased(missing, self.erasing_event)
            if new := missing - erased:
                self._keys.add_missing({i: self._wrap(os.urandom(32), i) for i in new})
                wrapped = self._keys.fetch(streams)  # another process may have won the insert
        found = self._unwrapped(wrapped)
        self._keep(found)
        return kept | found

    def _unwrapped(self, wrapped: Mapping[str, bytes]) -> dict[str, AESGCM]:
        return {i: AESGCM(self._unwrap(w, i)) for i, w in wrapped.items()}

    def _wrap(self, key: bytes, stream_id: str) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._kek.encrypt(nonce, key, stream_id.encode())

    def _unwrap(self, wrapped: bytes, stream_id: str) -> bytes:
        return self._kek.decrypt(wrapped[:NONCE], wrapped[NONCE:], stream_id.encode())


class OpeningKeys:
    """Data keys kept by one reader of the published feed (a projector), so that a batch of
    events of streams it opened before asks the table nothing. Erasure still wins, from the
    moment the reader sees it, because of what it reads, in order:

    - Only a stream's own key, for its own events, is kept: its erasing event travels in the
      same partition (keyed by stream id), after them. A key that seals another stream's
      event (an order's cancellation under its user's) is asked of the table each time: that
      user's erasure may be in a partition another process reads.
    - A batch holding a stream's erasing event drops the stream's kept key before anything of
      the batch is opened (the table no longer has it: its fields read as null), and a key the
      table no longer has is dropped whenever a batch asks for it.
    - The reader calls `clear()` whenever it may have skipped part of a partition (partitions
      assigned, a catch-up from the event store): it then asks the table again.

    Not thread-safe: one reader's loop owns it."""

    def __init__(self, personal: PersonalData, limit: int = OPENING_KEYS_KEPT) -> None:
        self._personal = personal
        self._limit = limit
        self._kept: OrderedDict[str, AESGCM] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        self._kept.clear()

    def open_envelopes(
        self, envelopes: Sequence[dict[str, Any]], *, only: Container[str] | None = None
    ) -> list[dict[str, Any]]:
        """`PersonalData.open_envelopes` with the kept keys; see the class."""
        erasing = self._personal.erasing_event
        for envelope in envelopes:
            if envelope["event_type"] == erasing:
                self._kept.pop(envelope["stream_id"], None)
        return self._personal.open_envelopes(envelopes, self, only=only)

    def keys_for(self, wanted: set[str], own: set[str]) -> dict[str, AESGCM]:
        """The keys of the `wanted` streams: the kept ones of `own` (streams whose own events
        want them, and no other event), the others from the table (then kept if in `own`)."""
        others = wanted - own
        kept = {stream: self._kept[stream] for stream in own - others if stream in self._kept}
        for stream in kept:
            self._kept.move_to_end(stream)
        asked = wanted - kept.keys()
        fetched = self._personal.fetched(asked)
        for stream in asked - fetched.keys():  # erased: never kept again
            self._kept.pop(stream, None)
        self._kept.update((stream, key) for stream, key in fetched.items() if stream in own)
        while len(self._kept) > self._limit:
            self._kept.popitem(last=False)
        return kept | fetched


def _context(stream_id: str, name: str) -> bytes:
    return f"{stream_id}/{name}".encode()


def _seal(key: AESGCM | None, stream_id: str, name: str, value: Any) -> str | None:
    """The sealed value; None without a key (its owner was erased) or for a null value."""
    if key is None or value is None:
        return None
    nonce = os.urandom(NONCE)
    sealed = key.encrypt(nonce, orjson.dumps(value), _context(stream_id, name))
    return MARK + base64.b64encode(nonce + sealed).decode()


def _open(key: AESGCM | None, stream_id: str, name: str, value: Any) -> Any:
    if not (isinstance(value, str) and value.startswith(MARK)):
        return value  # stored before encryption was configured (or null)
    if key is None:
        return None
    raw = base64.b64decode(value[len(MARK) :])
    return orjson.loads(key.decrypt(raw[:NONCE], raw[NONCE:], _context(stream_id, name)))
