"""The drill with the read side running: relay and projector publish and apply everything
through Kafka; the PostgreSQL data directory is lost and restored to latest (without the last
writes, see test_disaster_recovery), and the Kafka topics are lost too (or hold events the
restored log no longer has: the same thing to the relay). Following docs/operations.md, the
processes restart on a new topic prefix: the relay creates the topics and refills them from the
restored log, the projectors apply them over the restored read models (skipping by stream
version what those already hold), and the read models end equal to a rebuild of the restored
log. No manual step on the read models: the projector drops the restored progress rows of the
old topics itself, or their frozen watermarks would hold the read models' position (what
X-Min-Position waits for) at the restore point for ever."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring, wire
from eventkeep.bootstrap import build_projector, build_relay, event_recorder, projector_read_models
from eventkeep.eventstore.backup_cli import backup_app
from eventkeep.projections.readmodels import ReadModels
from eventkeep.replay.rebuild import rebuild
from eventkeep.settings import Settings
from tests.api.shopping import answer, create_product, pay, place_order, register
from tests.conftest_services import KAFKA_BOOTSTRAP, require_env
from tests.ops.cluster import Cluster
from tests.ops.test_disaster_recovery import (
    ARCHIVE_TIMEOUT,
    SETTLE,
    client_of,
    environment,
    invoke,
    settings,
)

pytestmark = pytest.mark.services


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    built = Cluster.create(archive_timeout=ARCHIVE_TIMEOUT)
    yield built
    built.destroy()


def kafka_settings(url: str, home: Path) -> Settings:
    unique = uuid.uuid4().hex[:10]
    return settings(url, home).model_copy(
        update={
            "kafka_bootstrap": require_env(KAFKA_BOOTSTRAP),
            "topic_prefix": f"dr{unique}",
            "topic_partitions": 2,
            "projector_group": f"dr{unique}",
        }
    )


class ReadSide:
    """A relay and a projector, threads of this process."""

    def __init__(self, settings: Settings, wiring: Wiring) -> None:
        # The projector writes on its own role's connection (the query side's only reads).
        self.models = projector_read_models(settings)
        personal = event_recorder(wiring.shop).personal_data
        self.workers: list[Any] = [
            build_relay(settings, wiring.shop),  # type: ignore[arg-type]
            build_projector(settings, self.models, personal=personal),
        ]
        self.threads = [threading.Thread(target=w.run, daemon=True) for w in self.workers]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for thread in self.threads:
            thread.join(30)
        self.models.close()


def traffic(client: TestClient, rounds: int) -> None:
    for _ in range(rounds):
        user = register(client, f"{uuid.uuid4().hex[:12]}@example.com")
        product = create_product(client, sku=uuid.uuid4().hex[:12], stock=100)
        orders = [answer(place_order(client, user["id"], product["id"], 1), 201) for _ in range(2)]
        pay(client, orders[0]["id"], "49.90")
        answer(client.post(f"/v1/orders/{orders[1]['id']}/cancel", json={"reason": "changed"}))


def wait_until_projected(wiring: Wiring, timeout: float = 120) -> None:
    head = wiring.shop.recorder.max_notification_id() or 0
    deadline = time.monotonic() + timeout
    while wiring.queries.models.position() < head:
        position = wiring.queries.models.position()
        assert time.monotonic() < deadline, f"read models at {position}, log at {head}"
        time.sleep(0.2)


def rebuilt(url: str, wiring: Wiring) -> dict[str, list[dict[str, Any]]]:
    fresh = ReadModels.open(postgres_url=url, prefix="rebuilt_")
    try:
        rebuild(wiring.shop.recorder, fresh)  # type: ignore[arg-type]
        return fresh.dump()
    finally:
        fresh.drop()
        fresh.close()


def test_kafka_lost_too_the_relay_refills_new_topics_and_read_models_equal_a_rebuild(
    cluster: Cluster, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    before = kafka_settings(cluster.url, home)
    wiring = wire(before)
    read_side = ReadSide(before, wiring)
    with client_of(wiring) as client:
        traffic(client, 8)
        invoke(backup_app, ["create"], environment(cluster.url, cluster, tmp_path / "backups"))
        traffic(client, 8)
        wait_until_projected(wiring)
        time.sleep(SETTLE)
        traffic(client, 4)  # the tail: in Kafka, maybe not in the restored log
        cluster.kill()
    read_side.stop()
    wiring.close()
    shutil.rmtree(cluster.data)

    restore = ["restore", "--to", "latest", "--data-dir", str(cluster.data), "--start"]
    env = environment(cluster.url, cluster, tmp_path / "backups")
    invoke(backup_app, [*restore, "--port", str(cluster.port)], env)

    after = kafka_settings(cluster.url, home)  # new topics: nothing of the old Kafka is read
    wiring = wire(after)
    read_side = ReadSide(after, wiring)
    try:
        head = wiring.shop.recorder.max_notification_id() or 0
        assert head > 0
        with client_of(wiring) as client:
            traffic(client, 2)  # the restored store takes commands while the topics refill
        wait_until_projected(wiring)
        live = wiring.queries.models.dump()
        assert live["orders"]
        assert live == rebuilt(cluster.url, wiring)
    finally:
        read_side.stop()
        wiring.close()
