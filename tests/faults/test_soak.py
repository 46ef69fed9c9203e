"""The soak under faults (issue 8, "Done when"): the distributed parts — API, relay and
projector, each with its own connections — run under continuous commands while a fault comes
every few seconds: PostgreSQL's and Redis's connections cut (through TCP proxies every part
goes through), PostgreSQL restarted, Kafka stopped and started. After each fault heals, the
write side and the read side work again within 10 s (and the cache settles, after Redis); at
the end no acknowledged write is lost, nothing refused was written, and the read models equal
a rebuild from the store.

One round of each fault by default (about a minute and a half); EVENTKEEP_SOAK_SECONDS=600
runs rounds for ten minutes (faults in a random order, seeded by EVENTKEEP_SOAK_SEED)."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.bootstrap import build_projector, build_relay, projector_read_models
from tests.api.conftest import distributed_settings, distributed_wiring
from tests.conftest_services import KAFKA_BOOTSTRAP, require_env, services
from tests.faults.load import (
    Load,
    assert_the_store_tells_the_truth,
    cache_settled_within,
    recovered_within,
    until_kafka_serves_groups,
)
from tests.faults.tcp_proxy import TcpProxy
from tests.projections.test_kafka_pipeline import (
    Threads,
    assert_equal_to_rebuild,
    traffic,
    wait_until_projected,
)

pytestmark = pytest.mark.services

RECOVERY = 10.0  # seconds: the bound, from a fault healing to every part working


class Soak:
    """The parts, built on settings whose PostgreSQL and Redis go through proxies."""

    def __init__(self, home: Path) -> None:
        unique = uuid.uuid4().hex[:10]
        real = distributed_settings(home)
        assert real.postgres_url is not None and real.redis_url is not None
        postgres, redis = real.postgres_url.get_secret_value(), real.redis_url.get_secret_value()
        self.postgres, self.redis = TcpProxy.to(postgres), TcpProxy.to(redis)
        self.settings = real.model_copy(
            update={
                "kafka_bootstrap": require_env(KAFKA_BOOTSTRAP),
                "topic_prefix": f"t{unique}",
                "topic_partitions": 2,
                "projector_group": f"g{unique}",
                "postgres_url": SecretStr(self.postgres.url(postgres)),
                "redis_url": SecretStr(self.redis.url(redis)),
            }
        )
        self.wiring: Wiring = distributed_wiring(home, self.settings)
        self.models = projector_read_models(self.settings)
        self.threads = Threads()

    def close(self) -> None:
        self.threads.stop_all()
        self.models.close()
        self.wiring.close()
        self.postgres.close()
        self.redis.close()


@pytest.fixture
def soak(tmp_path: Path) -> Iterator[Soak]:
    built = Soak(tmp_path / "home")
    yield built
    built.close()


def test_commands_and_projections_under_a_fault_every_few_seconds(soak: Soak) -> None:
    wiring, settings = soak.wiring, soak.settings
    admin = wiring.keys.create(Role.admin, "soak").secret_key
    rng = random.Random(int(os.environ.get("EVENTKEEP_SOAK_SEED", "8")))
    duration = float(os.environ.get("EVENTKEEP_SOAK_SECONDS", "0"))

    def cut(proxy: TcpProxy) -> Callable[[], None]:
        def fault() -> None:
            with proxy.down():
                time.sleep(rng.uniform(1, 3))  # the outage

        return fault

    def restart(service: str) -> Callable[[], None]:
        def fault() -> None:
            services("down", service)
            try:
                time.sleep(rng.uniform(1, 3))  # the outage
            finally:
                services("up", service)
            if service == "kafka":
                until_kafka_serves_groups(settings)

        return fault

    faults: dict[str, Callable[[], None]] = {
        "postgresql cut": cut(soak.postgres),
        "redis cut": cut(soak.redis),
        "postgresql restart": restart("postgres"),
        "kafka restart": restart("kafka"),
    }
    headers = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(wiring), headers=headers) as client:
        store = wiring.shop.recorder
        soak.threads.start(build_relay(settings, wiring.shop))
        soak.threads.start(build_projector(settings, soak.models, store=store))
        traffic(client, rounds=1)
        wait_until_projected(wiring)
        start = store.max_notification_id() or 0
        load = Load(client).start()
        began = time.monotonic()
        recoveries: list[tuple[str, dict[str, float]]] = []
        try:
            while True:
                names = list(faults)
                rng.shuffle(names)
                for name in names:
                    time.sleep(rng.uniform(2, 5))  # load without a fault
                    faults[name]()
                    took = recovered_within(RECOVERY, client, wiring, load)
                    if name == "redis cut":
                        took["cache"] = cache_settled_within(RECOVERY, wiring)
                    recoveries.append((name, took))
                if time.monotonic() - began >= duration:
                    break
        finally:
            load.stop()
        print("recovered (seconds after each fault healed):", recoveries)
        assert_the_store_tells_the_truth(wiring, load, start)
        traffic(client, rounds=1)  # orders and daily sales, after the faults too
        assert_equal_to_rebuild(wiring)
