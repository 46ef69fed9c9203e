"""I1: `eventkeep audit import` of a checked history file, as an operator runs it (both
passes: every line checked, then written), beside B2 (raw 100-row INSERT transactions)
measured in the same run."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import psycopg

from eventkeep.bench.baselines import b2_hundred_row_transactions
from eventkeep.bench.read_cli import EVENTKEEP_TABLES
from eventkeep.bench.read_workloads import env_for
from eventkeep.bench.report import Figure, Report
from eventkeep.bootstrap import build
from eventkeep.private_files import open_private
from eventkeep.replay import audit
from eventkeep.settings import Settings

I1_TARGET = 20_000  # events/s (docs/performance.md)


def exported(recorder: object, path: Path) -> int:
    """The store's whole history in the export format (as recorded); the event count."""
    with open_private(path) as target:
        return audit.export(recorder, target)


def i1_import(settings: Settings, history: Path, events: int, report: Report) -> None:
    """Measures B2, empties the store (its tables made again, with their grants, as a
    deployment makes them), then times `eventkeep audit import` of `history`."""
    assert settings.postgres_url is not None
    url = settings.postgres_url.get_secret_value()
    raw = b2_hundred_row_transactions(url, 5.0)
    b2 = report.add(Figure("B2", "raw psycopg, 100-row INSERT per transaction", raw, "rows/s"))
    with psycopg.connect(url, autocommit=True) as connection:
        for table in (*EVENTKEEP_TABLES, "bench_raw"):
            connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    build(settings, role="bench").close()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        ["eventkeep", "audit", "import", str(history)], env=env_for(settings), capture_output=True
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The import process's own CPU per event (not the database's): steadier than the rate on
    # a shared machine.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())
    rate = events / elapsed
    report.add(
        Figure(
            "I1",
            f"audit import of {events:,} events (checked, then written)",
            rate,
            "events/s",
            "B2",
            b2.value,
            target=f"≥ {I1_TARGET:,} events/s",
            passed=rate >= I1_TARGET,
            extra={"seconds": round(elapsed, 1), "cpu_us_per_event": round(cpu / events * 1e6, 1)},
        )
    )
