"""A batch in one round trip (issue 13 item 2): a committer plans its batch on the head its
last batch left and PostgreSQL's append function checks and writes it in one statement. When
another process appended meanwhile, or a version, claim or idempotency key is taken, the
function writes nothing and the batch takes the locked path, so every append gets exactly the
answer it got before — and the log keeps one contiguous, linked chain. Both modes (SQLite has
no round trips to save: every batch takes the locked path there)."""

from __future__ import annotations

from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError
from prometheus_client import REGISTRY

from eventkeep.commands.messages import CommandResult
from eventkeep.commands.ports import (
    ClaimTakenError,
    IdempotencyKeyUsedError,
    IdempotencyRecord,
    UniqueClaim,
)
from eventkeep.eventstore.hashchain import GENESIS, recomputed_hash
from tests.eventstore.conftest import MakeRecorder
from tests.eventstore.test_global_log import events_for


def batches(path: str) -> float:
    value = REGISTRY.get_sample_value("eventkeep_group_commit_batches_total", {"path": path})
    return value or 0.0


def test_two_processes_interleaving_keep_one_contiguous_chain(
    make_recorder: MakeRecorder,
) -> None:
    a, b = make_recorder(), make_recorder()
    one_trip, moved = batches("one_trip"), batches("moved")
    written = [w.insert_events(events_for(uuid4(), 1, 2)) for w in (a, a, a, b, a, b, b, a)]
    assert [p for positions in written for p in positions] == list(range(1, 17))
    prev = GENESIS
    for event in a.select_notifications(None, 100):
        assert (event.prev_hash, event.hash) == (prev, recomputed_hash(event, prev))
        prev = event.hash
    if a.sql.has_append_function:
        # a a a: the 2nd and 3rd in one trip; each switch of writer finds the head moved.
        assert batches("one_trip") - one_trip >= 3
        assert batches("moved") - moved >= 3


def test_what_one_trip_finds_taken_is_refused_as_before(make_recorder: MakeRecorder) -> None:
    a, b = make_recorder(), make_recorder()
    stream, alice, bob = uuid4(), uuid4(), uuid4()
    record = IdempotencyRecord("actor:key", "h", CommandResult(stream, 1, 0, created=True))
    b.insert_events(
        events_for(stream, 1, 1),
        claims=[UniqueClaim("user_email", "k1", alice)],
        idempotency=record,
    )
    a.insert_events(events_for(uuid4(), 1, 1))  # `a` knows the head: one trip next
    moved = batches("moved")
    with pytest.raises(IntegrityError):
        a.insert_events(events_for(stream, 1, 1))
    with pytest.raises(ClaimTakenError):
        a.insert_events(events_for(bob, 1, 1), claims=[UniqueClaim("user_email", "k1", bob)])
    with pytest.raises(IdempotencyKeyUsedError):
        a.insert_events(events_for(uuid4(), 1, 1), idempotency=record)
    if a.sql.has_append_function:
        assert batches("moved") - moved == 3  # each found by the function, decided locked
    assert a.select_events(bob) == []
    assert a.claim_owner("user_email", "k1") == alice
    assert [n.id for n in a.select_notifications(None, 10)] == [1, 2]
    # A claim released and taken in one trip: the function writes both.
    a.insert_events(events_for(stream, 2, 1), claims=[UniqueClaim("user_email", "k1", None)])
    a.insert_events(events_for(bob, 1, 1), claims=[UniqueClaim("user_email", "k1", bob)])
    assert a.claim_owner("user_email", "k1") == bob
