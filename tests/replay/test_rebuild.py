"""A rebuild runs beside the live read models while queries keep answering and commands keep
flowing, is swapped in atomically, and the live feed continues from the swap point with no gap
and no duplicate; an interrupted rebuild resumes where it stopped; one read model is rebuilt
alone, the others untouched; a read model added as one module and one registration is built
from the log and queried."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.projections.queries import Queries
from eventkeep.projections.readmodel import Envelope, ReadModel, ReadModelQueries, Row, applies
from eventkeep.projections.readmodels import ReadModels
from eventkeep.projections.registry import READ_MODELS, Registered
from eventkeep.replay.rebuild import Rebuild, rebuild
from tests.api.shopping import answer, create_product

pytestmark = pytest.mark.usefixtures("projected")


def adjust(client: TestClient, product_id: str, delta: int) -> dict[str, Any]:
    body = {"delta": delta, "reason": "count"}
    return answer(client.post(f"/v1/products/{product_id}/stock", json=body))


def wait_until_projected(wiring: Wiring, timeout: float = 60) -> None:
    head = wiring.shop.recorder.max_notification_id() or 0
    deadline = time.monotonic() + timeout
    while wiring.queries.position() < head:
        assert time.monotonic() < deadline, "the live feed did not catch up"
        time.sleep(0.05)


def rebuilt_from_scratch(wiring: Wiring) -> dict[str, Any]:
    fresh = ReadModels(wiring.queries.models.db, "scratch_")
    try:
        rebuild(wiring.shop.recorder, fresh)
        return fresh.dump()
    finally:
        fresh.drop()


def test_queries_answer_throughout_and_the_swap_loses_and_doubles_nothing(
    wiring: Wiring, app: FastAPI, client: TestClient
) -> None:
    products = [create_product(client, sku=f"R-{n}")["id"] for n in range(20)]
    for product_id in products:
        adjust(client, product_id, 1)
    wait_until_projected(wiring)
    answers: list[int] = []
    stop = threading.Event()

    def query() -> None:
        with TestClient(app, headers=dict(client.headers)) as reader:
            while not stop.is_set():
                for product_id in products[:5]:
                    answers.append(reader.get(f"/v1/products/{product_id}").status_code)

    reader = threading.Thread(target=query)
    reader.start()
    rebuilding = threading.Thread(
        target=Rebuild(wiring.shop.recorder, wiring.queries.models, batch_size=10).run
    )
    rebuilding.start()
    while rebuilding.is_alive():  # commands go on during the rebuild and its swap
        for product_id in products[:3]:
            adjust(client, product_id, 2)
    rebuilding.join()
    for product_id in products:
        adjust(client, product_id, 3)  # after the swap: the live feed must take these
    stop.set()
    reader.join()

    assert answers and set(answers) == {200}
    wait_until_projected(wiring)
    assert wiring.queries.models.dump() == rebuilt_from_scratch(wiring)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_rebuild_resumes_where_it_stopped(
    wiring: Wiring, client: TestClient, workers: int
) -> None:
    """In this process, or (PostgreSQL) in two worker processes, each group resuming from
    its own read models' progress."""
    product = create_product(client)
    for _ in range(30):
        adjust(client, product["id"], 1)
    # A load written every 10 events: `advance` hears of each once it is committed.
    job = Rebuild(
        wiring.shop.recorder,
        wiring.queries.models,
        batch_size=10,
        flush_events=10,
        workers=workers,
    )
    seen: list[int] = []

    def crash_after_a_load(position: int, head: int) -> None:
        """Stops once a load is committed (with workers: one of each group's)."""
        seen.append(position)
        if position > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(crash_after_a_load)
    [status] = [s for s in job.status() if s.name == "products"]
    # The load being written when it stopped may have been committed too.
    assert status.rebuilding and status.rebuild_position >= seen[-1] > 0

    resumed: list[int] = []
    job.run(lambda position, head: resumed.append(position))
    assert resumed[0] == status.rebuild_position  # not from the start
    assert not any(s.rebuilding for s in job.status())
    wait_until_projected(wiring)
    shown = client.get(f"/v1/products/{product['id']}").json()
    assert shown["stock"] == 10 + 30


def test_rebuilding_one_read_model_swaps_in_only_that_one(
    wiring: Wiring, client: TestClient, bearer: Any
) -> None:
    products = [create_product(client, sku=f"P-{n}")["id"] for n in range(5)]
    for product_id in products:
        adjust(client, product_id, 1)
    wait_until_projected(wiring)
    models = wiring.queries.models
    before = models.progress_by_name()
    users_before = models.dump()["users"]

    generations = Rebuild(wiring.shop.recorder, models, ["products"], batch_size=3).run()

    assert list(generations) == ["products"]
    after = models.progress_by_name()
    assert after["products"]["generation"] == generations["products"] > 0
    for name in ("users", "orders", "daily_sales"):  # untouched
        assert after[name].get("generation", 0) == before[name].get("generation", 0)
    assert models.dump()["users"] == users_before
    adjust(client, products[0], 5)  # the live feed goes on into the swapped-in tables
    wait_until_projected(wiring)
    assert models.dump() == rebuilt_from_scratch(wiring)
    assert client.get(f"/v1/products/{products[0]}").json()["stock"] == 10 + 1 + 5

    listed = client.get("/v1/projections", headers=bearer(Role.analyst)).json()["projections"]
    shown = {p["name"]: p["generation"] for p in listed}
    assert shown["products"] == generations["products"]
    assert shown["users"] == before["users"].get("generation", 0)


class Stock(ReadModel):
    """A read model added as docs/replay.md shows: units moved per product."""

    name = "stock_moves"
    stream_type = "Product"
    columns = ("id", "version", "moves", "updated_at")

    def schema(self, tag: str) -> list[str]:
        return [
            f"CREATE TABLE {self.table()} (id text PRIMARY KEY, version bigint NOT NULL,"
            " moves bigint NOT NULL, updated_at text NOT NULL)"
        ]

    @applies("ProductCreated")
    def created(self, _: Row | None, event: Envelope) -> Row:
        return {"moves": 0}

    @applies("ProductStockAdjusted")
    def adjusted(self, row: Row | None, event: Envelope) -> Row | None:
        return None if row is None else row | {"moves": row["moves"] + 1}


class StockQueries(ReadModelQueries):
    model: Stock

    def moves(self, product_id: str) -> int | None:
        row = self.model.get(product_id)
        return None if row is None else row["moves"]


def test_a_read_model_added_by_one_module_and_one_registration_is_built_and_queried(
    wiring: Wiring, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = create_product(client)
    for _ in range(3):
        adjust(client, product["id"], 1)
    wait_until_projected(wiring)
    monkeypatch.setitem(READ_MODELS, "stock_moves", Registered(Stock, StockQueries))

    models = ReadModels(wiring.queries.models.db, wiring.queries.models.prefix)
    models.migrate()
    try:
        Rebuild(wiring.shop.recorder, models, ["stock_moves"]).run()
        queries = Queries(models, wiring.queries.cache, wiring.queries.progress)
        stock = queries.of("stock_moves")
        assert isinstance(stock, StockQueries) and stock.moves(product["id"]) == 3
        assert models.position("stock_moves") == wiring.shop.recorder.max_notification_id()
    finally:
        ReadModels(models.db, models.prefix, ["stock_moves"]).drop()
