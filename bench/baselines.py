"""Raw baselines, measured in the same run as the workloads they judge (docs/performance.md)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder as StockRecorder
from eventsourcing.postgres import PostgresDatastore

from eventkeep.bench.report import Histogram
from eventkeep.domain.product import Product

PAYLOAD = os.urandom(100).hex().encode()  # 200 bytes, like a small event


def run_threads(
    threads: int, seconds: float, work: Callable[[Histogram], int]
) -> tuple[float, Histogram]:
    """Runs `work` in a loop on each thread for `seconds`; returns units/s and latencies."""
    deadline = time.perf_counter() + seconds
    counts = [0] * threads
    histograms = [Histogram() for _ in range(threads)]

    def loop(i: int) -> None:
        while time.perf_counter() < deadline:
            counts[i] += work(histograms[i])

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    merged = Histogram()
    for histogram in histograms:
        merged.merge(histogram)
    return sum(counts) / elapsed, merged


def b1_single_row_commits(url: str, threads: int, seconds: float) -> float:
    """B1: one 200-byte row INSERT + COMMIT per transaction, `threads` connections."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_raw")
        conn.execute("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, body bytea)")
    local = threading.local()

    def work(histogram: Histogram) -> int:
        if not hasattr(local, "conn"):
            local.conn = psycopg.connect(url, autocommit=True)
        start = time.perf_counter()
        local.conn.execute("INSERT INTO bench_raw (body) VALUES (%s)", (PAYLOAD,), prepare=True)
        histogram.record(time.perf_counter() - start)
        return 1

    rate, _ = run_threads(threads, seconds, work)
    return rate


def b2_hundred_row_transactions(url: str, seconds: float) -> float:
    """B2: 100 rows per INSERT transaction; rows/s."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_raw")
        conn.execute("CREATE TABLE bench_raw (id bigserial PRIMARY KEY, body bytea)")
    conn = psycopg.connect(url, autocommit=True)
    bodies = [PAYLOAD] * 100

    def work(_: Histogram) -> int:
        conn.execute(
            "INSERT INTO bench_raw (body) SELECT * FROM unnest(%s::bytea[])",
            (bodies,),
            prepare=True,
        )
        return 100

    rate, _ = run_threads(1, seconds, work)
    conn.close()
    return rate


def datastore_for(
    params: dict[str, str], *, pool_size: int, max_overflow: int = 0
) -> PostgresDatastore:
    """The library's PostgreSQL datastore on the connection `params` name."""
    return PostgresDatastore(
        dbname=params["dbname"],
        host=params["host"],
        port=params["port"],
        user=params["user"],
        password=params["password"],
        pool_size=pool_size,
        max_overflow=max_overflow,
    )


def b3_stock_recorder(params: dict[str, str], threads: int, per_save: int, seconds: float) -> float:
    """B3: the eventsourcing library's stock PostgreSQL recorder (table lock per append)."""
    datastore = datastore_for(params, pool_size=threads + 1)
    recorder = StockRecorder(datastore, events_table_name="bench_stock_events")
    with datastore.transaction(commit=True) as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_stock_events")
    recorder.create_table()

    def work(_: Histogram) -> int:
        stream = uuid4()
        recorder.insert_events(
            [StoredEvent(stream, v, "BenchEvent", PAYLOAD) for v in range(1, per_save + 1)]
        )
        return per_save

    rate, _ = run_threads(threads, seconds, work)
    datastore.close()
    return rate


class LibraryShop(Application[UUID]):
    """B8's application: the library's own, with its defaults (no aggregate cache, no
    snapshots), stock PostgreSQL recorder (table `librarybench_events`)."""

    name = "LibraryBench"


def b8_library_application(
    params: dict[str, str], threads: int, seconds: float, products: int = 10_000
) -> tuple[float, Histogram]:
    """B8: W1's command (load a product, adjust its stock by one, save) through the
    `eventsourcing` library's Application on its stock PostgreSQL recorder (NOT its
    POSTGRES_ENABLE_DB_FUNCTIONS path), on `products` products, `threads` threads; a save that
    loses a race is decided again (at most 5 times), as eventkeep's command bus does."""
    with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute("DROP TABLE IF EXISTS librarybench_events")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": params["dbname"],
        "POSTGRES_HOST": params["host"],
        "POSTGRES_PORT": params["port"],
        "POSTGRES_USER": params["user"],
        "POSTGRES_PASSWORD": params["password"],
        "POSTGRES_POOL_SIZE": str(threads + 1),
    }
    app = LibraryShop(env=env)
    made = [
        Product.create(f"B8-{i}", "Bench", "A product", "bench", "9.99", "EUR", 1_000_000)
        for i in range(products)
    ]
    for start in range(0, products, 1000):
        app.save(*made[start : start + 1000])
    ids = [product.id for product in made]
    rng = random.Random(11)

    def work(histogram: Histogram) -> int:
        product_id = ids[rng.randrange(len(ids))]
        began = time.perf_counter()
        for _ in range(5):
            product: Any = app.repository.get(product_id)
            product.adjust_stock(1, "bench")
            try:
                app.save(product)
                break
            except IntegrityError:
                continue
        histogram.record(time.perf_counter() - began)
        return 1

    try:
        return run_threads(threads, seconds, work)
    finally:
        app.close()


def now() -> datetime:
    return datetime.now(UTC)
