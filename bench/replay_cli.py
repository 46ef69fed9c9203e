"""`eventkeep bench replay`: P3 (rebuild all read models from the store, with upcasting, while
queries keep answering), M1 (memory of an API process and of a rebuild) and I1 (`audit
import` of the same history into an emptied store, beside B2), on PostgreSQL.

It owns the database it is pointed at: `--wipe` is required. `--scale 1` seeds about a
million events; the baseline is the store's raw read rate (one psycopg cursor reading every
row in position order) measured in the same run.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

import psycopg
import typer

from eventkeep.bench.import_workload import exported, i1_import
from eventkeep.bench.read_cli import EVENTKEEP_TABLES
from eventkeep.bench.read_workloads import (
    admin_key,
    env_for,
    process,
    product_paths,
    wait_for_http,
    wrk,
)
from eventkeep.bench.report import Figure, Publish, Report
from eventkeep.bench.seed import Seeder, SeedSizes
from eventkeep.bench.seed_cli import show_progress
from eventkeep.bootstrap import build
from eventkeep.settings import Settings


def raw_read_rate(url: str) -> tuple[float, int]:
    """Every event row, in position order, through one server-side cursor: rows/s."""
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(url) as connection, connection.cursor(name="raw") as cursor:
        cursor.itersize = 10_000
        cursor.execute("SELECT * FROM shop_events ORDER BY position")
        for _ in cursor:
            rows += 1
    return rows / (time.perf_counter() - started), rows


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a live process (VmHWM), in MB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The parent id is the 2nd field after the command, which is in parentheses.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class TreePeakRss:
    """Samples, every `interval` seconds in a thread, the peak resident memory of a process
    and of its children (a rebuild's worker processes), each child's highest peak kept;
    `stop()` answers their sum in MB (conservative: the peaks need not coincide)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self._pid = pid
        self._peaks: dict[int, float] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            for pid in [self._pid, *children_of(self._pid)]:
                self._peaks[pid] = max(self._peaks.get(pid, 0.0), peak_rss_mb(pid))

    def stop(self) -> float:
        self._stopping.set()
        self._thread.join()
        return sum(self._peaks.values())


def replay_bench(
    wipe: Annotated[bool, typer.Option(help="Required: eventkeep's tables are dropped first.")],
    scale: Annotated[float, typer.Option(min=0.01, max=1.0, help="1 = about 1M events.")] = 1.0,
    results: Annotated[Path, typer.Option(help="Folder for the JSON result.")] = Path(
        "bench/results"
    ),
    i1: Annotated[
        bool, typer.Option(help="Also I1: export the history, empty the store, import it.")
    ] = True,
    publish: Publish = None,
) -> None:
    """P3 and M1 on the PostgreSQL at EVENTKEEP_POSTGRES_URL (Redis used when set)."""
    if not wipe:
        raise typer.BadParameter("pass --wipe: this benchmark drops eventkeep's tables first")
    settings = Settings().model_copy(update={"rate_limit": 0})
    if settings.postgres_url is None:
        raise typer.BadParameter("set EVENTKEEP_POSTGRES_URL (see `infra/services env`)")
    url = settings.postgres_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as connection:
        for table in EVENTKEEP_TABLES:
            connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    system = build(settings, role="bench")
    models = system.read_models
    models.drop()
    sizes = SeedSizes(
        users=int(20_000 * scale), products=int(20_000 * scale), orders=int(190_000 * scale)
    )
    show_progress(Seeder(system.bus, sizes, seed=9), sizes)
    events = system.shop.recorder.max_notification_id() or 0
    report = Report()
    raw, rows = raw_read_rate(url)
    baseline = report.add(Figure("B6", f"raw read of the store, {rows:,} rows", raw, "rows/s"))

    logs = settings.home / f"bench-replay-{uuid.uuid4().hex[:6]}"
    logs.mkdir(parents=True, exist_ok=True)
    env = env_for(settings)
    api = f"http://127.0.0.1:{settings.port}"
    first = subprocess.run(["eventkeep", "replay", "rebuild"], env=env, capture_output=True)
    if first.returncode != 0:
        raise RuntimeError(first.stderr.decode())  # live tables to query during the rebuild
    with process(["eventkeep", "serve"], env, logs / "serve.log") as server:
        wait_for_http(api)
        key = admin_key(settings)
        paths = product_paths(models, 5000)
        started = time.perf_counter()
        with (logs / "rebuild.log").open("w") as log:
            rebuild = subprocess.Popen(
                ["eventkeep", "replay", "rebuild"], env=env, stdout=log, stderr=log
            )
        memory = TreePeakRss(rebuild.pid)
        p99s, answered = [], 0.0
        while rebuild.poll() is None:
            during = wrk(api, key, paths, 2, connections=8)
            p99s.append(during.latency["p99_ms"])
            answered = max(answered, during.rate)
        elapsed = time.perf_counter() - started
        rss = memory.stop()
        if rebuild.returncode != 0:
            raise RuntimeError((logs / "rebuild.log").read_text())
        api_rss = peak_rss_mb(server.pid)
    rate = events / elapsed
    report.add(
        Figure(
            "P3",
            f"rebuild of {events:,} events (upcast), queries running",
            rate,
            "events/s",
            "B6",
            baseline.value,
            target="≥ 50,000 events/s and ≥ 0.4× B6; 1M events < 30 s",
            passed=rate >= 50_000 and rate >= 0.4 * baseline.value,
            extra={
                "seconds": round(elapsed, 1),
                "queries_p99_ms_worst": max(p99s),
                "queries_req_s_best": round(answered),
            },
        )
    )
    report.add(Figure("P3", "query p99 during the rebuild (worst 2 s window)", max(p99s), "ms"))
    report.add(
        Figure(
            "M1",
            f"rebuild peak RSS (its process and its workers'), {events:,} events",
            rss,
            "MB",
            target="< 500 MB",
            passed=rss < 500,
        )
    )
    report.add(
        Figure(
            "M1",
            f"API process peak RSS at {events:,} events",
            api_rss,
            "MB",
            target="< 300 MB",
            passed=api_rss < 300,
        )
    )
    history = logs / "history.jsonl"
    if i1:
        exported(system.shop.recorder, history)
    system.close()
    if i1:
        i1_import(settings, history, events, report)
    report.console.print(report.table())
    report.console.print(f"results: {report.save(results, publish, 'replay')}")
