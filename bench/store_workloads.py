"""Workloads on eventkeep's own PostgreSQL event store: W2 (big appends) and G1 (tailing)."""

from __future__ import annotations

import itertools
import threading
import time
from uuid import uuid4

from eventkeep.bench.baselines import PAYLOAD, datastore_for, now, run_threads
from eventkeep.bench.report import Histogram
from eventkeep.eventstore.postgres import PostgresApplicationRecorder
from eventkeep.eventstore.records import RecordedEvent

TABLE = "bench_events"


def fresh_recorder(params: dict[str, str], pool_size: int) -> PostgresApplicationRecorder:
    datastore = datastore_for(params, pool_size=pool_size, max_overflow=4)
    with datastore.transaction(commit=True) as cursor:
        for suffix in ("", "_claims", "_idempotency"):
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}{suffix}")
    recorder = PostgresApplicationRecorder(datastore, events_table_name=TABLE)
    recorder.create_table()
    return recorder


def close(recorder: PostgresApplicationRecorder) -> None:
    recorder.close()
    recorder.datastore.close()


def events(count: int) -> list[RecordedEvent]:
    stream = uuid4()
    recorded_at = now()
    return [
        RecordedEvent(stream, v, "BenchEvent", PAYLOAD, "Bench", 1, recorded_at)
        for v in range(1, count + 1)
    ]


def w2_hundred_event_appends(params: dict[str, str], threads: int, seconds: float) -> float:
    """W2: appends of 100 events through eventkeep's recorder; events/s."""
    recorder = fresh_recorder(params, threads + 1)

    def work(_: Histogram) -> int:
        recorder.insert_events(events(100), metadata={"actor": "bench"})
        return 100

    rate, _ = run_threads(threads, seconds, work)
    close(recorder)
    return rate


def w_single_event_appends(
    params: dict[str, str], threads: int, seconds: float
) -> tuple[float, Histogram]:
    """One-event appends straight into the recorder (no domain code): group commit alone."""
    recorder = fresh_recorder(params, threads + 1)

    def work(histogram: Histogram) -> int:
        start = time.perf_counter()
        recorder.insert_events(events(1), metadata={"actor": "bench"})
        histogram.record(time.perf_counter() - start)
        return 1

    result = run_threads(threads, seconds, work)
    close(recorder)
    return result


def g1_tailing_reader(params: dict[str, str], writers: int, total: int) -> dict[str, int | float]:
    """G1: a reader tails the log while `writers` threads commit `total` one-event appends."""
    recorder = fresh_recorder(params, writers + 2)
    reader_recorder = PostgresApplicationRecorder(recorder.datastore, events_table_name=TABLE)
    per_writer = total // writers
    seen: list[int] = []
    done = threading.Event()

    def write() -> None:
        for _ in range(per_writer):
            recorder.insert_events(events(1), metadata={"actor": "bench"})

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()
            batch = reader_recorder.select_notifications(last, 1000, inclusive_of_start=False)
            seen.extend(n.id for n in batch)
            if batch:
                last = batch[-1].id
            elif finished:
                return

    started = time.perf_counter()
    reader = threading.Thread(target=tail)
    reader.start()
    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    elapsed = time.perf_counter() - started
    written = per_writer * writers
    out_of_order = sum(1 for a, b in itertools.pairwise(seen) if b <= a)
    missed = written - len(set(seen))
    close(recorder)
    return {
        "written": written,
        "seen": len(seen),
        "missed": missed,
        "duplicates": len(seen) - len(set(seen)),
        "out_of_order": out_of_order,
        "events_per_s": round(written / elapsed, 1),
    }
