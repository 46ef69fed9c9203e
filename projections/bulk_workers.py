"""The bulk paths split over worker processes by stream type (PostgreSQL): a rebuild's load,
and a far-behind projector's catch-up.

Both are Python under one GIL per process: reading and decoding the log, upcasting, the fold
and the writes (docs/performance.md). The read models of different stream types share
nothing (a read model follows the streams of one type), so each worker process takes a group
of them on its own: it reads only its stream types' events
(`EventRecorder.select_envelopes`) up to the log's head at the start, and
- `load`: folds them and writes its read models' fresh tables and `log` progress
  (`projections/bulk.py` `BulkLoad`), from each group's own progress (an interrupted
  rebuild resumes each group where it stopped); the rebuild then builds the indexes and
  swaps (`replay/rebuild.py`);
- `catch_up`: applies them to its read models' live tables in big batches
  (`projections/bulk.py` `catch_up`), and hands each batch's changed rows back for the
  caller's cache to forget.

A worker is `python -m eventkeep.projections.bulk_workers`, a fresh interpreter (nothing
inherited from the caller's threads or connections): its task is pickled to its stdin, and it
answers on its stdout, then ends with its last position (or its failure, as text). It runs at
a lower priority (`NICENESS`: queries come first) and ends when the caller stops or goes away
(the caller kills it; a broken pipe ends it). SQLite (the embedded mode) has one writer at a
time: there the bulk paths run in the caller's process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from eventkeep.eventstore.recorder import StoreAddress
from eventkeep.projections.bulk import BulkLoad, catch_up
from eventkeep.projections.database import PostgresDatabase
from eventkeep.projections.log_feed import fill_from
from eventkeep.projections.log_pages import upcast_pages
from eventkeep.projections.readmodel import Change
from eventkeep.projections.readmodels import LOG, ReadModels

# Worker processes: two cores here, and three stream types (the orders' read models in one,
# the users' and the products' in the other).
WORKERS = 2
# Added to a worker's niceness: queries and the live feed come before a rebuild.
NICENESS = 2

Kind = Literal["load", "catch_up"]
Heard = Callable[[list[Change], int], None]  # (changed rows, the position every worker passed)


@dataclass(frozen=True)
class Task:
    """What one worker does: `kind` for read models `names` (tables of `prefix`), from the
    events of `stream_types` after `after` (None: its read models' own `log` progress), up
    to `head`."""

    kind: Kind
    store: StoreAddress
    database_url: str
    prefix: str
    names: tuple[str, ...]
    stream_types: tuple[str, ...]
    after: int | None
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
    """Whether `models` can be loaded or caught up from `store` in worker processes."""
    return (
        workers > 1
        and getattr(store, "address", None) is not None
        and isinstance(models.db, PostgresDatabase)
        and len(groups(models, workers)) > 1
    )


def in_workers(
    kind: Kind,
    store: Any,
    models: ReadModels,
    heard: Heard,
    *,
    after: int | None = None,
    workers: int = WORKERS,
    batch_size: int,
    flush_events: int = 0,
) -> int:
    """Runs `kind` for `models` in worker processes (`can_split` must hold) up to the log's
    head now; `heard(changes, position)` each time the workers tell of rows changed (catch-up)
    or every worker has committed up to a further position. Returns the head. A worker's
    failure is raised here, after the others are stopped."""
    assert isinstance(models.db, PostgresDatabase)
    head = store.max_notification_id() or 0
    tasks = [
        Task(
            kind=kind,
            store=store.address,
            database_url=models.db.url,
            prefix=models.prefix,
            names=names,
            stream_types=tuple({models.models[n].stream_type: None for n in names}),
            after=after,
            head=head,
            batch_size=batch_size,
            flush_events=flush_events,
        )
        for names in groups(models, workers)
    ]
    progress = models.progress_by_name()
    reached = [
        after if after is not None else min(progress[n].get(LOG, 0) for n in task.names)
        for task in tasks
    ]
    told = min(reached)
    messages: queue.Queue[tuple[int, str, Any]] = queue.Queue()
    started: list[_Worker] = []
    try:
        for index, task in enumerate(tasks):
            started.append(_Worker(index, task, messages))
        running = len(started)
        while running:
            index, word, (changes, position) = messages.get()
            if word == "failed":
                raise RuntimeError(f"bulk worker for {', '.join(tasks[index].names)}: {position}")
            running -= word == "done"
            reached[index] = max(reached[index], position)
            if changes or min(reached) > told:
                told = max(told, min(reached))
                heard(changes, told)
    finally:
        for worker in started:
            worker.stop()
    return head


# How long a worker whose words stopped making sense may take to end before it is killed.
_END_SECONDS = 5.0


class _Worker:
    def __init__(
        self,
        index: int,
        task: Task,
        messages: queue.Queue[tuple[int, str, Any]],
        command: tuple[str, ...] = (sys.executable, "-m", __name__),
    ):
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._process.stdin is not None
        self._process.stdin.write(pickle.dumps(task))
        self._process.stdin.close()
        self._index = index
        self._messages = messages
        self._thread = threading.Thread(target=self._receive, name=f"bulk-worker-{index}")
        self._thread.daemon = True
        self._thread.start()

    def _receive(self) -> None:
        """Hands the worker's words over; its end without a last word is a failure."""
        stream = self._process.stdout
        assert stream is not None
        while True:
            try:
                word, value = pickle.load(stream)
            except (EOFError, OSError, pickle.UnpicklingError, ValueError):
                # Bounded: a worker may be blocked writing more of what no longer reads as
                # words into a pipe nobody drains.
                try:
                    code = self._process.wait(_END_SECONDS)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    code = self._process.wait()
                self._messages.put((self._index, "failed", ([], f"ended with code {code}")))
                return
            self._messages.put((self._index, word, value))
            if word != "committed":
                return

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._thread.join(5)
        assert self._process.stdout is not None
        self._process.stdout.close()


def _work(task: Task, out: BinaryIO) -> None:
    """A worker: does its task, telling the caller what it committed."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)

    def say(word: str, changes: list[Change], position: Any) -> None:
        pickle.dump((word, (changes, position)), out)
        out.flush()

    store = models = None
    try:
        store = task.store.open()
        models = ReadModels(PostgresDatabase(task.database_url), task.prefix, task.names)
        start = task.after
        if start is None:
            start = min(p.get(LOG, 0) for p in models.progress_by_name().values())
        if task.kind == "load":
            pages = upcast_pages(
                store,
                start,
                task.batch_size,
                until=task.head,
                stream_types=task.stream_types,
                only=models.read_sealed(),
            )
            load = BulkLoad(models, flush_events=task.flush_events)
            reached = load.run(pages, lambda p: say("committed", [], p), end=task.head)
        else:
            models.fill = fill_from(store)  # a gap closed from the store, as the feed does
            reached = catch_up(
                store,
                models,
                start,
                lambda changes, p: say("committed", changes, p),
                task.batch_size,
                until=task.head,
                stream_types=task.stream_types,
            )
        say("done", [], reached)
    except BrokenPipeError:
        return  # the caller stopped
    except Exception as error:  # told to the caller (as text: it may not pickle), raised there
        say("failed", [], f"{type(error).__name__}: {error}")
    finally:
        if models is not None:
            models.db.close()
        if store is not None:
            task.store.close(store)


if __name__ == "__main__":
    # The words to the caller go on a descriptor of their own; file descriptor 1 (what
    # Python prints and what C code writes) goes to stderr, so nothing else lands among them.
    _out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _work(pickle.load(sys.stdin.buffer), _out)
