"""A bulk worker whose words stop reading as words is ended and its failure told, within a
bounded wait: it may be blocked writing the rest into a pipe the caller no longer drains."""

from __future__ import annotations

import queue
import sys
from typing import Any

from eventkeep.eventstore.recorder import StoreAddress
from eventkeep.projections.bulk_workers import Task, _Worker

# Writes far more than a pipe holds, none of it a pickle, then would end normally.
NOISY_WORKER = "import sys; sys.stdout.buffer.write(b'not a word ' * 10**6); sys.stdout.flush()"


def test_a_worker_whose_words_do_not_read_is_ended_and_its_failure_told() -> None:
    task = Task(
        kind="load",
        store=StoreAddress("unused", {}),
        database_url="postgresql://unused",
        prefix="rm_",
        names=("products",),
        stream_types=("Product",),
        after=0,
        head=0,
        batch_size=1,
        flush_events=0,
    )
    messages: queue.Queue[tuple[int, str, Any]] = queue.Queue()
    worker = _Worker(0, task, messages, command=(sys.executable, "-c", NOISY_WORKER))
    try:
        # Without a bounded wait the caller waited for the blocked writer for good.
        index, word, (_, reason) = messages.get(timeout=60)
    finally:
        worker.stop()
    assert (index, word) == (0, "failed")
    assert reason.startswith("ended with code")
