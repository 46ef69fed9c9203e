"""The log follower every reader of the log uses: batches from a position, a batch not
advanced past read again, woken by a commit long before its poll interval (in-process on
SQLite, PostgreSQL NOTIFY from another connection), stopped promptly, and the same for
coroutines."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from uuid import uuid4

from eventkeep.eventstore.log_follower import LogFollower
from tests.eventstore.conftest import MakeRecorder
from tests.eventstore.test_global_log import events_for

SLOW_POLL = 30.0  # seconds: a follower woken sooner was woken by the commit


def append(store: Any, count: int = 1) -> None:
    store.insert_events(events_for(uuid4(), 1, count), metadata={"actor": "test"})


def writer_and_reader(make_recorder: MakeRecorder) -> tuple[Any, Any]:
    """On PostgreSQL two recorders, as two processes would be (the commit must travel as a
    NOTIFY); on SQLite one, whose own commits wake it."""
    writer = make_recorder()
    reader = make_recorder() if type(writer).__name__.startswith("Postgres") else writer
    return writer, reader


def test_batches_from_a_position_and_a_batch_not_advanced_past_comes_again(
    make_recorder: MakeRecorder,
) -> None:
    store = make_recorder()
    append(store, 7)
    follower = LogFollower(store, 2, batch_size=3)
    batches = follower.batches(live=False)
    first = next(batches)
    assert [e.id for e in first] == [3, 4, 5]
    assert [e.id for e in next(batches)] == [3, 4, 5]  # not advanced: read again
    follower.advance_to(first[-1].id)
    assert [e.id for e in next(batches)] == [6, 7]
    follower.advance_to(7)
    assert list(batches) == []  # the end of the log, not followed live
    until = LogFollower(store, 0, batch_size=2)
    seen = []
    for batch in until.batches(live=False, until=5):
        seen += [e.id for e in batch]
        until.advance_to(batch[-1].id)
    assert seen == [1, 2, 3, 4, 5]


def test_a_commit_wakes_a_waiting_follower_and_stop_ends_it(make_recorder: MakeRecorder) -> None:
    writer, reader = writer_and_reader(make_recorder)
    append(writer)
    follower = LogFollower(reader, 0, poll_interval=SLOW_POLL)
    received: list[tuple[int, float]] = []
    idle = threading.Event()

    def follow() -> None:
        for batch in follower.batches(on_idle=idle.set):
            received.extend((event.id, time.monotonic()) for event in batch)
            follower.advance_to(batch[-1].id)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert idle.wait(10)  # caught up, now waiting
    time.sleep(0.3)  # the LISTEN connection is up by now
    committed = time.monotonic()
    append(writer)
    deadline = time.monotonic() + 10
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [position for position, _ in received] == [1, 2]
    assert received[1][1] - committed < 5  # woken by the commit, not by the 30 s poll

    stopping = time.monotonic()
    follower.stop()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - stopping < 5


def test_a_coroutine_follows_the_log_woken_by_commits(make_recorder: MakeRecorder) -> None:
    writer, reader = writer_and_reader(make_recorder)
    append(writer, 2)

    async def follow() -> list[int]:
        follower = LogFollower(reader, 0, batch_size=1, poll_interval=SLOW_POLL)
        seen: list[int] = []
        async for batch in follower.batches_async():
            seen += [event.id for event in batch]
            follower.advance_to(batch[-1].id)
            if len(seen) == 2:
                await asyncio.sleep(0.3)
                threading.Thread(target=append, args=(writer,)).start()
            if len(seen) == 3:
                return seen
        return seen

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(follow(), 10)) == [1, 2, 3]
    assert time.monotonic() - started < 8
