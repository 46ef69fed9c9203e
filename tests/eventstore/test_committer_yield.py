"""The committer gives up the GIL once before taking a batch only when its last batch answered
several writer threads (so they join it): a lone writer and writers awaiting on an event loop
never pay for that yield, and an event loop's appends committed among busy writer threads
are each answered (none starves). The real committer on real stores, both modes; only the
committer's `time.sleep` is counted (still run)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from eventkeep.eventstore import group_commit
from eventkeep.eventstore.group_commit import Append
from tests.eventstore.conftest import MakeRecorder
from tests.eventstore.test_global_log import events_for

WAIT = 60.0  # seconds: a bound on a hang, never reached when it works


def yields(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The committer's `time.sleep` calls from now on (each still made)."""
    made: list[float] = []

    def sleep(seconds: float) -> None:
        made.append(seconds)
        time.sleep(seconds)

    # The module's `time`, with `sleep` counted (it uses `monotonic` too).
    monkeypatch.setattr(
        group_commit, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep)
    )
    return made


def awaited(recorder: Any, count: int) -> list[list[int]]:
    """`count` appends awaited at once on one event loop (one stream each)."""

    async def run() -> list[list[int]]:
        appends = [
            recorder.append_async(Append(events_for(uuid4(), 1, 1), {})) for _ in range(count)
        ]
        return await asyncio.wait_for(asyncio.gather(*appends), WAIT)

    return asyncio.run(run())


def test_a_lone_writer_and_an_event_loop_never_make_the_committer_yield(
    make_recorder: MakeRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = make_recorder()
    made = yields(monkeypatch)
    for _ in range(20):  # one writer thread: each batch answers one thread
        recorder.insert_events(events_for(uuid4(), 1, 1))
    assert made == []
    for _ in range(5):  # batches of several awaited appends, one after another
        assert len(awaited(recorder, 8)) == 8
    assert made == []


def test_an_event_loop_s_appends_among_busy_writer_threads_are_all_answered(
    make_recorder: MakeRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = make_recorder()
    made = yields(monkeypatch)
    stop = threading.Event()
    failures: list[BaseException] = []

    def busy() -> None:
        try:
            while not stop.is_set():
                recorder.insert_events(events_for(uuid4(), 1, 1))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=busy) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        answered = [positions for _ in range(5) for positions in awaited(recorder, 10)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=WAIT)
    assert failures == [] and not any(thread.is_alive() for thread in threads)
    assert len(answered) == 50 and all(len(positions) == 1 for positions in answered)
    assert made and set(made) == {0}  # the threads did make it yield, once a batch at most
