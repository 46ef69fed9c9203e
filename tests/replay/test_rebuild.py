"""A rebuild runs beside the live read models while queries keep answering and commands keep
flowing, is swapped in atomically, and the live feed continues from the swap point with no gap
and no duplicate; an interrupted rebuild resumes where it stopped."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.projections.readmodels import ReadModels
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


def test_an_interrupted_rebuild_resumes_where_it_stopped(
    wiring: Wiring, client: TestClient
) -> None:
    product = create_product(client)
    for _ in range(30):
        adjust(client, product["id"], 1)
    job = Rebuild(wiring.shop.recorder, wiring.queries.models, batch_size=10)
    seen: list[int] = []

    def crash_after_two_batches(position: int, head: int) -> None:
        seen.append(position)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(crash_after_two_batches)
    status = job.status()
    assert status.rebuilding and status.rebuild_position == seen[-1] > 0

    resumed: list[int] = []
    job.run(lambda position, head: resumed.append(position))
    assert resumed[0] == seen[-1]  # not from the start
    assert not job.status().rebuilding
    wait_until_projected(wiring)
    shown = client.get(f"/v1/products/{product['id']}").json()
    assert shown["stock"] == 10 + 30
