"""A batch's planning links its events with `ChainLinker`, which frames the fields events
repeat once per distinct value (issue 13: a tenth of W2's committer time was framing them
again for every event). The hashes must be exactly `event_hash`'s, which verification
recomputes: whatever an append repeats or changes from one event to the next, keyed or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest

from eventkeep.eventstore.group_commit import Append, Head, plan_batch, state_at
from eventkeep.eventstore.hashchain import GENESIS, canonical_metadata, event_hash
from eventkeep.eventstore.records import RecordedEvent


def _appends() -> list[Append]:
    """Appends whose events repeat and change every framed field between neighbours."""
    stream, other = uuid4(), uuid4()
    moment = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    same_moment_elsewhere = moment.astimezone(timezone(timedelta(hours=5)))
    next_moment = moment + timedelta(microseconds=1)
    return [
        Append(
            events=[
                RecordedEvent(stream, 1, "A", b'{"x":1}', "Product", 1, moment),
                RecordedEvent(stream, 2, "A", b'{"x":1}', "Product", 1, moment),
                RecordedEvent(stream, 3, "B", b'{"x":2}', "Product", 2, moment),
                RecordedEvent(stream, 4, "B", b'{"x":2}', "Product", 2, same_moment_elsewhere),
                RecordedEvent(stream, 5, "B", b"{}", "Product", 2, next_moment),
            ],
            metadata={"actor": "a", "correlation_id": "c"},
        ),
        Append(
            events=[
                RecordedEvent(other, 1, "A", b"{}", "User", 1, moment),
                RecordedEvent(stream, 6, "A", b"{}", "Product", 1, moment),
            ],
            metadata={"actor": "b"},
        ),
        Append(events=[RecordedEvent(other, 2, "A", b"{}", "Order", 1, moment)], metadata={}),
    ]


@pytest.mark.parametrize("key", [None, b"k" * 32], ids=["unkeyed", "keyed"])
def test_a_planned_batch_is_linked_as_event_hash_links_it(key: bytes | None) -> None:
    appends = _appends()
    plan = plan_batch(appends, state_at(Head(7, GENESIS)), datetime.now(UTC), key)
    metadata = [canonical_metadata(a.metadata) for a in appends for _ in a.events]
    prev = GENESIS
    assert [row.position for row in plan.rows] == list(range(8, 8 + len(metadata)))
    for row, canonical in zip(plan.rows, metadata, strict=True):
        expected = event_hash(
            prev,
            position=row.position,
            stream_id=row.stream_id,
            stream_type=row.stream_type,
            stream_version=row.stream_version,
            event_type=row.event_type,
            schema_version=row.schema_version,
            recorded_at=row.recorded_at,
            data=row.data,
            metadata=canonical,
            key=key,
        )
        assert (row.prev_hash, row.hash) == (prev, expected)
        prev = row.hash
