"""The read-path workloads: P1 (projector throughput), P2 (command → visible), R1/R2 (HTTP
queries under wrk), S1 (R1 at two sizes). Processes are started as an operator would start
them (`eventkeep serve|relay|project`), so each runs on its own core share and GIL."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import httpx

from eventkeep.bench.report import Histogram
from eventkeep.bootstrap import Eventkeep
from eventkeep.projections.readmodels import ReadModels
from eventkeep.settings import Settings


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`eventkeep …` in the background, stopped with SIGTERM (as in production) at the end."""
    with log.open("w") as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()


def p1_projector_throughput(
    system: Eventkeep, head: int, timeout: float = 3600
) -> tuple[float, int]:
    """One projector of a new group, in this process, into empty read models, over topics the
    relay has filled up to `head`: events/s from its start to the read models reaching the
    head, whichever way it gets there (a new group catches up from the event store in bulk,
    then reads Kafka on; projections/bulk.py), group join included."""
    models = system.read_models
    models.drop()
    models.migrate()
    projector = system.projector()
    thread = threading.Thread(target=projector.run, daemon=True)
    started = time.perf_counter()
    thread.start()
    wait_until(lambda: models.position() >= head, timeout, "the projector to reach the head")
    elapsed = time.perf_counter() - started
    projector.stop()
    thread.join(30)
    return head / elapsed, head


@dataclass(frozen=True)
class Wrk:
    rate: float
    latency: dict[str, float]


def wrk(
    url: str,
    key: str,
    paths: list[str],
    seconds: float,
    connections: int = 32,
    body: str | None = None,
) -> Wrk:
    """wrk over `paths` (picked at random per request; POSTing `body` when given), 2 threads,
    with latency percentiles."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run infra/bench-tools")
    method, lua_body = ('"POST"', f"[[{body}]]") if body else ('"GET"', "nil")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        quoted = ",".join(f'"{p}"' for p in paths)
        script.write(
            f"local paths = {{{quoted}}}\n"
            f'wrk.headers["Authorization"] = "Bearer {key}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"local method = {method}\n"
            f"local body = {lua_body}\n"
            "request = function()\n"
            "  return wrk.format(method, paths[math.random(#paths)], nil, body)\n"
            "end\n"
            "done = function(summary, latency, requests)\n"
            "  for _, p in pairs({50, 95, 99, 99.9}) do\n"
            '    io.write(string.format("P%g %d\\n", p, latency:percentile(p)))\n'
            "  end\n"
            "  local failed = summary.errors.status + summary.errors.timeout\n"
            '  io.write(string.format("ERRORS %d\\n", failed))\n'
            "end\n"
        )
    try:
        output = subprocess.run(
            # A 10 s timeout: a slow answer on a loaded machine counts in the latencies
            # (wrk's default 2 s would drop it and fail the run as an error instead).
            [
                *("wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s"),
                *("-s", script.name, url),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    rate = float(_wrk_figure(r"Requests/sec:\s+([\d.]+)", output))
    marks = dict(re.findall(r"^P([\d.]+) (\d+)$", output, re.MULTILINE))
    errors = int(_wrk_figure(r"^ERRORS (\d+)$", output))
    if errors:
        raise RuntimeError(f"wrk saw {errors} failed requests:\n{output}")
    latency = {f"p{p}_ms": round(int(us) / 1000, 3) for p, us in marks.items()}
    return Wrk(rate, latency)


def p2_command_to_visible(
    send: Callable[[int], int],
    position: Callable[[], int],
    rate: float,
    seconds: float,
    pool: Executor,
) -> Histogram:
    """Commands at `rate`/s, on `pool`'s threads (`send(i)` answers its position); a watcher
    notes when each position becomes visible in the read models. Latency = visible -
    committed, both taken in this process."""
    committed: dict[int, float] = {}
    histogram = Histogram()
    done = threading.Event()
    lock = threading.Lock()

    def watch() -> None:
        while not (done.is_set() and not committed):
            reached = position()
            now = time.perf_counter()
            with lock:
                for pos in [p for p in committed if p <= reached]:
                    histogram.record(now - committed.pop(pos))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def command(i: int) -> None:
        pos = send(i)
        with lock:
            committed[pos] = time.perf_counter()

    started = time.perf_counter()
    sent = [pool.submit(command, i) for i in range(int(rate * seconds)) if _pace(started, i, rate)]
    for future in sent:
        future.result()
    done.set()
    watcher.join(60)
    return histogram


def _pace(started: float, i: int, rate: float) -> bool:
    """Sleeps until command `i` is due; always True (a filter that paces a comprehension)."""
    pause = started + i / rate - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
    return True


def b7_bare_framework(api: str, paths: list[str], seconds: float, log: Path) -> Wrk:
    """B7: `bench/bare_app.py` (fixed bytes from a bare FastAPI route) served by uvicorn with
    2 workers, under the same wrk settings as R1 (same paths, 8 connections)."""
    port = api.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "eventkeep.bench.bare_app", "--port", port, "--workers", "2"]
    with process(command, dict(os.environ), log):
        wait_for_http(api, paths[0])
        return wrk(api, "bench", paths, seconds, connections=R1_CONNECTIONS)


R1_CONNECTIONS = 8


def product_paths(models: ReadModels, limit: int) -> list[str]:
    with models.db.reading() as cursor:
        cursor.execute(f"SELECT id FROM {models.table('products')} LIMIT %s", (limit,))
        products = [f"/v1/products/{row['id']}" for row in cursor.fetchall()]
        cursor.execute(f"SELECT id FROM {models.table('users')} LIMIT %s", (limit,))
        users = [f"/v1/users/{row['id']}" for row in cursor.fetchall()]
    return [p for pair in zip(products, users, strict=False) for p in pair]


SEARCH_WORDS = ("red", "quiet", "wireless", "lamp", "chair", "kettle", "camera", "desk")
SEARCH_CATEGORIES = ("kitchen", "audio", "office", "tools")


def search_paths() -> list[str]:
    """Full-text search with a category filter, a price range and a sort, as a shop page asks."""
    return [
        f"/v1/products?q={word}&category={category}&min_price=1.00&max_price=500.00&sort={sort}"
        for word in SEARCH_WORDS
        for category in SEARCH_CATEGORIES
        for sort in ("price", "name")
    ]


def _wrk_figure(pattern: str, output: str) -> str:
    found = re.search(pattern, output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{output}")
    return found.group(1)


def env_for(settings: Settings) -> dict[str, str]:
    values = {
        "EVENTKEEP_POSTGRES_URL": settings.postgres_url.get_secret_value()
        if settings.postgres_url
        else "",
        "EVENTKEEP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "EVENTKEEP_REDIS_URL": settings.redis_url.get_secret_value() if settings.redis_url else "",
        "EVENTKEEP_CLAIM_SECRET": settings.claim_secret.get_secret_value()
        if settings.claim_secret
        else "",
        "EVENTKEEP_HOME": str(settings.home),
        "EVENTKEEP_TOPIC_PREFIX": settings.topic_prefix,
        "EVENTKEEP_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "EVENTKEEP_PROJECTOR_GROUP": settings.projector_group,
        "EVENTKEEP_RATE_LIMIT": "0",  # one key drives the whole load
    }
    return os.environ | {k: v for k, v in values.items() if v}


def wait_for_http(api: str, path: str = "/readyz") -> None:
    """Until the server at `api` answers `path` (a minute at most)."""

    def ready() -> bool:
        try:
            return httpx.get(f"{api}{path}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, "the API")


def admin_key(settings: Settings) -> str:
    """A new admin key in the store `settings` name, for the load generator."""
    # Made as an operator makes one, by the command line: the benchmarks stay below the API.
    made = subprocess.run(
        ["eventkeep", "keys", "create", "--role", "admin", "--name", "bench"],
        env=env_for(settings),
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]
