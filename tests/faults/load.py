"""Commands posted continuously while a fault test breaks and heals the services, and the checks
that follow every fault (issue 8): what each command was answered is kept, so that after the
faults every acknowledged event is found in the store at its position and nothing refused was
written; and `recovered_within` bounds how long the write and read sides take to work again."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.settings import Settings
from tests.api.shopping import PRODUCT

Ack = tuple[str, int, int]  # stream id, version, position the command answered

# What the API may answer while a service is down: refused (nothing written) or, when the
# connection broke during a commit, unknown (written or not). Anything else fails the test.
REFUSED, UNKNOWN = "STORE_UNAVAILABLE", "COMMIT_OUTCOME_UNKNOWN"


@dataclass
class Load:
    """`writers` threads each create a product, then change its stock, over and over, until
    stopped; every answer is sorted into acknowledged, refused, unknown or unexpected."""

    client: TestClient
    writers: int = 2
    pause: float = 0.02  # between one writer's commands: load, not a flood of two cores
    acked: list[Ack] = field(default_factory=list)
    refused: int = 0
    unknown: int = 0
    unexpected: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for _ in range(self.writers):
            thread = threading.Thread(target=self._write, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self._threads), "a writer hangs"
        assert not self.unexpected, self.unexpected[:5]

    def _write(self) -> None:
        product: str | None = None
        while not self._stop.is_set():
            if product is None:
                body = PRODUCT | {"sku": f"L-{uuid.uuid4().hex[:12]}", "stock": 1000}
                response = self.client.post("/v1/products", json=body)
            else:
                body = {"delta": 1, "reason": "load"}
                response = self.client.post(f"/v1/products/{product}/stock", json=body)
            acked = self._sort(response)
            if acked is not None and product is None:
                product = acked[0]
            elif acked is not None and acked[1] >= 20:
                product = None  # a new stream now and then: creates and changes mixed
            time.sleep(self.pause)

    def _sort(self, response: Any) -> Ack | None:
        with self._lock:
            if response.status_code in (200, 201):
                body = response.json()
                ack = (body["id"], body["version"], body["position"])
                self.acked.append(ack)
                return ack
            code = response.json().get("error", {}).get("code") if response.content else None
            if response.status_code == 503 and code == REFUSED:
                self.refused += 1
            elif response.status_code == 503 and code == UNKNOWN:
                self.unknown += 1
            else:
                self.unexpected.append(f"{response.status_code} {response.text[:300]}")
            return None

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Until `count` commands in all were acknowledged."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"{len(self.acked)} of {count} acknowledged"
            assert not self.unexpected, self.unexpected[:5]
            time.sleep(0.05)

    def acked_since(self, count: int) -> int:
        with self._lock:
            return len(self.acked) - count


def assert_the_store_tells_the_truth(wiring: Wiring, load: Load, start: int) -> None:
    """Every acknowledged event is in the store at its position; every other event the store
    took since `start` (a log position before the load) is one answered unknown, never one
    refused."""
    store = wiring.shop.recorder
    logged = {
        event.id: (str(event.originator_id), event.originator_version)
        for event in store.select_notifications(start, 10_000_000, inclusive_of_start=False)
    }
    missing = [ack for ack in load.acked if logged.get(ack[2]) != (ack[0], ack[1])]
    assert not missing, f"{len(missing)} acknowledged events not in the store: {missing[:5]}"
    extra = len(logged) - len(load.acked)
    assert 0 <= extra <= load.unknown, (
        f"{extra} events stored that were not acknowledged ({load.unknown} answered unknown,"
        f" {load.refused} refused)"
    )


def recovered_within(
    seconds: float, client: TestClient, wiring: Wiring, load: Load
) -> dict[str, float]:
    """From now (the service answers again): a command is acknowledged, and the read models
    reach it and answer a query at its position, each within `seconds`. Returns how long each
    took (seconds since now), to name in a failure."""
    began = time.monotonic()
    took: dict[str, float] = {}
    acked = len(load.acked)
    while load.acked_since(acked) <= 0:  # the writers' next commands succeed
        assert time.monotonic() - began < seconds, f"no command acknowledged in {seconds} s"
        time.sleep(0.05)
    took["write"] = time.monotonic() - began
    position = load.acked[-1][2]
    while wiring.queries.models.position() < position:
        assert time.monotonic() - began < seconds, (
            f"read models at {wiring.queries.models.position()}, an acknowledged write at"
            f" {position}: not working again within {seconds} s"
        )
        time.sleep(0.05)
    took["read models"] = time.monotonic() - began
    query: Callable[[], Any] = lambda: client.get(  # noqa: E731
        "/v1/products", params={"limit": 1}, headers={"X-Min-Position": str(position)}
    )
    while (response := query()).status_code != 200:
        assert time.monotonic() - began < seconds, f"queries answer {response.status_code}"
        time.sleep(0.05)
    took["query"] = time.monotonic() - began
    return took


def cache_settled_within(seconds: float, wiring: Wiring) -> float:
    """From now (Redis answers again): the projector's cache writes (answers) are in up to the
    log's head within `seconds` (the cache's settled position of every read model)."""
    from eventkeep.projections.readmodels import cache_position_of

    began = time.monotonic()
    head = wiring.shop.recorder.max_notification_id() or 0
    progress = wiring.queries.models.progress_by_name
    while min(cache_position_of(p) for p in progress().values()) < head:
        assert time.monotonic() - began < seconds, f"cache not settled within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - began


def until_kafka_serves_groups(settings: Settings, timeout: float = 120) -> None:
    """After `infra/services up kafka` (the broker answers metadata requests): until its group
    coordinator has loaded the projectors' group too. A restarted broker answers
    NOT_COORDINATOR until then (up to ~9 s on a loaded two-core machine), and no consumer of a
    group can fetch before: Kafka serves consumers again from here, where the 10 s start."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from eventkeep.bootstrap import relay_settings

    deadline = time.monotonic() + timeout
    # As the projectors (their certificate may describe their groups; the relay's may not).
    admin = KafkaAdminClient(**relay_settings(settings, "projector").client_options())
    try:
        while True:
            try:
                group = admin.describe_groups([settings.projector_group])
                if group[settings.projector_group]["error"] is None:
                    return
            except KafkaError:
                pass
            assert time.monotonic() < deadline, "Kafka's group coordinator never loaded"
            time.sleep(0.1)
    finally:
        admin.close()
