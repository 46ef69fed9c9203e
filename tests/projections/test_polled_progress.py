"""An API worker's read-model progress (`PolledProgress`, distributed mode) is read 100 times a
second only while a reader waits for a position, and about 10 times a second otherwise (it
once polled at 100 Hz all the time: two queries each, a thread taking the event loop's GIL);
a wait that starts after an idle spell sees a position the projector just recorded at once,
not after the idle interval; a position is published only once the near cache's fence has
passed. On real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from eventkeep.projections.database import PostgresDatabase
from eventkeep.projections.queries import HOT_SECONDS, PolledProgress, Queries
from eventkeep.projections.readmodels import ReadModels
from tests.conftest_services import POSTGRES_URL, require_env

IDLE_INTERVAL = 0.5  # long, so that a wait answered within it was woken, not polled


class CountingModels:
    """The read models, counting how often their progress is read."""

    def __init__(self, models: ReadModels) -> None:
        self.models = models
        self.reads = 0

    def progress_by_name(self) -> Any:
        self.reads += 1
        return self.models.progress_by_name()

    def quarantined_streams(self) -> Any:
        return self.models.quarantined_streams()


@pytest.fixture
def models() -> Iterator[ReadModels]:
    prefix = f"polled{uuid.uuid4().hex[:8]}_"
    models = ReadModels(PostgresDatabase(require_env(POSTGRES_URL)), prefix, names=["users"])
    models.migrate()
    try:
        yield models
    finally:
        models.drop()
        models.close()


def test_an_idle_worker_reads_progress_rarely_and_a_waiting_one_often(
    models: ReadModels,
) -> None:
    counting = CountingModels(models)
    progress = PolledProgress(counting, idle_interval=IDLE_INTERVAL)  # type: ignore[arg-type]
    try:
        time.sleep(0.2)
        idle_start = counting.reads
        time.sleep(2.0)
        idle_reads = counting.reads - idle_start
        progress.want()
        hot_start = counting.reads
        time.sleep(HOT_SECONDS * 0.8)
        hot_reads = counting.reads - hot_start
    finally:
        progress.stop()
    assert idle_reads <= 2.0 / IDLE_INTERVAL + 1, idle_reads
    assert hot_reads >= 3 * (idle_reads + 1), (hot_reads, idle_reads)


def test_a_wait_after_an_idle_spell_sees_the_new_position_at_once(models: ReadModels) -> None:
    progress = PolledProgress(models, idle_interval=IDLE_INTERVAL * 20)  # 10 s: never polled
    queries = Queries(models, cache=None, progress=progress)  # type: ignore[arg-type]
    try:
        time.sleep(0.3)  # the first read is done; the poller sleeps its idle interval
        models.apply([], {"log": 7})  # a projector records its progress

        started = time.monotonic()
        reached = asyncio.run(queries.reach(7, timeout=5.0, name="users"))
        waited = time.monotonic() - started
    finally:
        progress.stop()
    assert reached == 7
    assert waited < IDLE_INTERVAL * 20 / 3, waited  # woken, not left to its 10 s interval


def test_a_position_is_published_only_after_the_fence(models: ReadModels) -> None:
    """The near cache's fence runs after each read and before its values are published: a
    worker shows no position whose cache tombstones its near copies may not have seen yet."""
    import threading

    passed = threading.Event()
    progress = PolledProgress(
        models, interval=0.01, idle_interval=0.05, fence=lambda: passed.wait(30)
    )
    try:
        models.apply([], {"log": 9})
        time.sleep(0.3)  # read many times meanwhile, never past the fence
        assert progress.position_of("users") == 0
        passed.set()
        deadline = time.monotonic() + 10
        while progress.position_of("users") != 9:
            assert time.monotonic() < deadline, "the position after the fence"
            time.sleep(0.01)
    finally:
        passed.set()
        progress.stop()
