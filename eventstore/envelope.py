"""The export envelope: one JSON object per event, used by the relay's Kafka
messages, the live stream and audit export."""

from __future__ import annotations

from typing import Any

import orjson

from eventkeep.eventstore.hashchain import canonical_time
from eventkeep.eventstore.records import LoggedEvent


def to_envelope(event: LoggedEvent, *, with_hashes: bool = False) -> dict[str, Any]:
    """The event as recorded (its stored schema version); run `domain.upcasters.upcast` on
    the result for the current schema."""
    envelope: dict[str, Any] = {
        "position": event.position,
        "stream_id": str(event.originator_id),
        "stream_type": event.stream_type,
        "stream_version": event.originator_version,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at": rfc3339(event),
        "data": orjson.loads(event.state),
        "metadata": event.metadata,
    }
    if with_hashes:
        envelope["prev_hash"] = event.prev_hash.hex()
        envelope["hash"] = event.hash.hex()
    return envelope


def rfc3339(event: LoggedEvent) -> str:
    return canonical_time(event.recorded_at).replace("+00:00", "Z")
