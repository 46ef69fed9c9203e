"""A rebuild's bulk load split over worker processes by stream type (PostgreSQL).

The load is Python under one GIL per process: reading and decoding the log, upcasting, the
fold and the COPY encoding (docs/performance.md). The read models of different stream types
share nothing (a read model follows the streams of one type), so each worker process loads a
group of them on its own: it reads only its stream types' events
(`EventRecorder.select_envelopes`), folds them and writes its read models' tables and `log`
progress (`projections/bulk.py` `BulkLoad`), up to the log's head at the start; the rebuild's
process then builds the indexes and swaps the tables in (`replay/rebuild.py`). Each read
model's progress is its own, so an interrupted rebuild resumes each group where it stopped.

A worker is `python -m eventkeep.replay.rebuild_workers`, a fresh interpreter (nothing
inherited from the caller's threads or connections): its task is pickled to its stdin, and it
answers on its stdout with the positions it has committed, then its end (or its failure, as
text). It runs at a lower priority (`NICENESS`: queries answer first) and ends when the
rebuild stops or goes away (the rebuild kills it; a broken pipe ends it).

SQLite (the embedded mode) has one writer at a time: its rebuild loads in its own process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from eventkeep.eventstore.recorder import StoreAddress
from eventkeep.projections.bulk import BulkLoad
from eventkeep.projections.database import PostgresDatabase
from eventkeep.projections.log_pages import upcast_pages
from eventkeep.projections.readmodels import LOG, ReadModels

# Worker processes of a rebuild: two cores here, and three stream types (the orders' read
# models in one, the users' and the products' in the other).
WORKERS = 2
# Added to a worker's niceness: queries and the live feed come before a rebuild.
NICENESS = 2


@dataclass(frozen=True)
class Task:
    """What one worker loads: read models `names` (tables of `prefix`) from the events of
    `stream_types` after each one's own `log` progress, up to `head`."""

    store: StoreAddress
    database_url: str
    prefix: str
    names: tuple[str, ...]
    stream_types: tuple[str, ...]
    head: int
    batch_size: int
    flush_events: int


def groups(models: ReadModels, workers: int) -> list[tuple[str, ...]]:
    """The read models in at most `workers` groups, those of one stream type together: the
    stream types dealt by their number of read models (each event is folded once per read
    model following its type), the largest first, each to the group with the fewest."""
    by_type: dict[str, list[str]] = {}
    for name, model in models.models.items():
        by_type.setdefault(model.stream_type, []).append(name)
    dealt: list[list[str]] = [[] for _ in range(max(1, min(workers, len(by_type))))]
    for names in sorted(by_type.values(), key=len, reverse=True):
        min(dealt, key=len).extend(names)
    return [tuple(group) for group in dealt if group]


def can_split(store: Any, models: ReadModels, workers: int) -> bool:
    """Whether a rebuild of `models` from `store` can run in worker processes."""
    return (
        workers > 1
        and getattr(store, "address", None) is not None
        and isinstance(models.db, PostgresDatabase)
        and len(groups(models, workers)) > 1
    )


def load_in_workers(
    store: Any,
    models: ReadModels,
    head: int,
    *,
    workers: int,
    batch_size: int,
    flush_events: int,
    advance: Callable[[int], None],
) -> int:
    """Loads `models` (migrated, indexes deferred) up to `head` in worker processes;
    `advance(position)` each time every worker has committed up to it. Returns `head`.
    A worker's failure is raised here, after the others are stopped."""
    assert isinstance(models.db, PostgresDatabase)
    tasks = [
        Task(
            store=store.address,
            database_url=models.db.url,
            prefix=models.prefix,
            names=names,
            stream_types=tuple({models.models[n].stream_type: None for n in names}),
            head=head,
            batch_size=batch_size,
            flush_events=flush_events,
        )
        for names in groups(models, workers)
    ]
    progress = models.progress_by_name()
    reached = [min(progress[n].get(LOG, 0) for n in task.names) for task in tasks]
    told = min(reached)
    messages: queue.Queue[tuple[int, str, Any]] = queue.Queue()
    started: list[_Worker] = []
    try:
        for index, task in enumerate(tasks):
            started.append(_Worker(index, task, messages))
        running = len(started)
        while running:
            index, kind, value = messages.get()
            if kind == "failed":
                raise RuntimeError(f"rebuild worker for {', '.join(tasks[index].names)}: {value}")
            if kind == "done":
                running -= 1
            reached[index] = max(reached[index], value)
            if min(reached) > told:
                told = min(reached)
                advance(told)
    finally:
        for worker in started:
            worker.stop()
    return head


class _Worker:
    def __init__(self, index: int, task: Task, messages: queue.Queue[tuple[int, str, Any]]):
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self._process.stdin is not None
        self._process.stdin.write(pickle.dumps(task))
        self._process.stdin.close()
        self._index = index
        self._messages = messages
        self._thread = threading.Thread(
            target=self._receive, name=f"rebuild-worker-{index}", daemon=True
        )
        self._thread.start()

    def _receive(self) -> None:
        """Hands the worker's messages over; its end without a last word is a failure."""
        stream = self._process.stdout
        assert stream is not None
        while True:
            try:
                kind, value = pickle.load(stream)
            except (EOFError, OSError, pickle.UnpicklingError, ValueError):
                code = self._process.wait()
                self._messages.put((self._index, "failed", f"ended with exit code {code}"))
                return
            self._messages.put((self._index, kind, value))
            if kind != "committed":
                return

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._thread.join(5)
        assert self._process.stdout is not None
        self._process.stdout.close()


def _work(task: Task, out: BinaryIO) -> None:
    """A worker: loads its group and tells the rebuild each committed position."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)

    def say(kind: str, value: Any) -> None:
        pickle.dump((kind, value), out)
        out.flush()

    store = models = None
    try:
        store = task.store.open()
        models = ReadModels(PostgresDatabase(task.database_url), task.prefix, task.names)
        start = min(p.get(LOG, 0) for p in models.progress_by_name().values())
        pages = upcast_pages(
            store, start, task.batch_size, until=task.head, stream_types=task.stream_types
        )
        load = BulkLoad(models, flush_events=task.flush_events)
        say("done", load.run(pages, lambda position: say("committed", position), end=task.head))
    except BrokenPipeError:
        return  # the rebuild stopped
    except Exception as error:  # told to the rebuild (as text: it may not pickle), raised there
        say("failed", f"{type(error).__name__}: {error}")
    finally:
        if models is not None:
            models.db.close()
        if store is not None:
            task.store.close(store)


def _main(argv: Sequence[str]) -> None:
    out = sys.stdout.buffer  # the messages; anything printed goes to stderr instead
    sys.stdout = sys.stderr
    _work(pickle.load(sys.stdin.buffer), out)


if __name__ == "__main__":
    _main(sys.argv)
