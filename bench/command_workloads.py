"""W1 (commands through the command layer, no HTTP) and W3 (HTTP commands under wrk), on the
shop's own store in the distributed mode, over products made by the seeder."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from uuid import UUID

import psycopg

from eventkeep.bench.baselines import run_threads
from eventkeep.bench.read_workloads import Wrk, admin_key, env_for, process, wait_for_http, wrk
from eventkeep.bench.report import Histogram
from eventkeep.bench.seed import Seeder, SeedSizes
from eventkeep.bootstrap import Eventkeep, build
from eventkeep.commands.handlers import CommandBus
from eventkeep.commands.messages import AdjustStock, CommandContext
from eventkeep.settings import Settings

SHOP_TABLES = (
    "shop_events", "shop_events_claims", "shop_events_idempotency", "shop_events_data_keys",
    "shop_snapshots",
)  # fmt: skip
CONTEXT = CommandContext(actor="bench", correlation_id="bench")


def fresh_shop(settings: Settings, products: int) -> tuple[Eventkeep, list[UUID]]:
    """eventkeep on emptied tables, with `products` products made by the seeder."""
    assert settings.postgres_url is not None, "a distributed-mode benchmark"
    url = settings.postgres_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as connection:
        for table in SHOP_TABLES:
            connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    system = build(settings, role="bench")
    seeder = Seeder(system.bus, SeedSizes(users=1, products=products, orders=0), seed=5, label="w")
    seeder.run(lambda phase, done: None)
    return system, [product.id for product in seeder.products]


def w1_commands(
    bus: CommandBus, products: list, writers: int, seconds: float
) -> tuple[float, Histogram]:
    """Stock adjustments (one event each) on random products, `writers` threads: the seeder's
    products hold the most stock there may be, so each takes one unit out."""
    rng = random.Random(11)

    def work(histogram: Histogram) -> int:
        product = products[rng.randrange(len(products))]
        began = time.perf_counter()
        bus.handle(AdjustStock(product, -1, "bench"), CONTEXT)
        histogram.record(time.perf_counter() - began)
        return 1

    return run_threads(writers, seconds, work)


def w1_awaited_commands(
    bus: CommandBus, products: list, in_flight: int, seconds: float
) -> tuple[float, Histogram]:
    """W1's command awaited (`CommandBus.handle_async`), `in_flight` at a time on one event
    loop and no thread each: what the HTTP routes do, without HTTP."""
    rng = random.Random(11)
    histogram = Histogram()
    done = 0

    async def writer(deadline: float) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            product = products[rng.randrange(len(products))]
            began = time.perf_counter()
            await bus.handle_async(AdjustStock(product, -1, "bench"), CONTEXT)
            histogram.record(time.perf_counter() - began)
            done += 1

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(writer(started + seconds) for _ in range(in_flight)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return done / elapsed, histogram


def w3_http_commands(settings: Settings, products: list, seconds: float, logs: Path) -> Wrk:
    """`eventkeep serve --workers 2` and wrk POSTing stock adjustments (no rate limit)."""
    key = admin_key(settings)
    api = f"http://127.0.0.1:{settings.port}"
    with process(["eventkeep", "serve", "--workers", "2"], env_for(settings), logs / "w3.log"):
        wait_for_http(api)
        paths = [f"/v1/products/{product}/stock" for product in products[:5000]]
        return wrk(api, key, paths, seconds, body='{"delta": -1, "reason": "bench"}')
