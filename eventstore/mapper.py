"""Maps domain events to stored rows and back, through the one upcaster chain.

A stored event keeps exactly the catalog's shape: `topic` is the event type, `state` is the
JSON of the event's data fields (orjson), and the stream type, schema version and recorded-at
time travel beside it (`RecordedEvent`). Reading runs `domain.upcasters.upcast` on the
envelope before the domain event is rebuilt, so aggregates only ever see current schemas.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import CanSnapshotAggregate, DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic, register_topic

import eventkeep.domain
from eventkeep.domain.catalog import EVENT_TYPES, STREAM_TYPES, event_type_of, stream_type_of
from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.records import RecordedEvent

# Snapshots name their aggregate's class by its path; releases before the one package wrote
# `domain.product:Product`. Those paths resolve to the same classes under `eventkeep.domain`.
register_topic("domain", eventkeep.domain)

# Attributes the library keeps on every event object that are not catalog data.
ENVELOPE_ATTRIBUTES = ("originator_id", "originator_version", "timestamp", "originator_topic")


def encode_data(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


class EnvelopeMapper(Mapper[UUID]):
    """Catalog events as envelopes; snapshots in the library's own format (they are a cache
    of aggregate state, kept apart from the history, upcast by the aggregate's class_version)."""

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        if isinstance(domain_event, CanSnapshotAggregate):
            return super().to_stored_event(domain_event)
        event_class = type(domain_event)
        state = vars(domain_event)
        data = {k: v for k, v in state.items() if k not in ENVELOPE_ATTRIBUTES}
        return RecordedEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=event_type_of(event_class),
            state=encode_data(data),
            stream_type=stream_type_of(event_class),
            schema_version=getattr(event_class, "class_version", 1),
            recorded_at=state["timestamp"],
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        if not isinstance(stored_event, RecordedEvent):  # a snapshot
            return super().to_domain_event(stored_event)
        envelope = upcast(
            {
                "event_type": stored_event.topic,
                "schema_version": stored_event.schema_version,
                "data": orjson.loads(stored_event.state),
            }
        )
        event_class = EVENT_TYPES[envelope["event_type"]]
        state: dict[str, Any] = dict(envelope["data"])
        originator_id = stored_event.originator_id
        state["originator_id"] = (
            originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
        )
        state["originator_version"] = stored_event.originator_version
        state["timestamp"] = stored_event.recorded_at
        if stored_event.originator_version == 1:
            state["originator_topic"] = get_topic(STREAM_TYPES[stored_event.stream_type])
        domain_event: DomainEventProtocol[UUID] = object.__new__(event_class)
        object.__setattr__(domain_event, "__dict__", state)
        return domain_event
