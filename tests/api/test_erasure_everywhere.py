"""Erasure reaches every copy (issue 9, item 4): a user with a unique email, names and a
phone number in an order's cancellation reason goes through every part — event store, read
models (and their SQLite files with `-wal`/`-shm`), Redis, Kafka topics, an export, the log —
then is erased, and none of those strings can be found in any of them. Kafka carries the
sealed form from the start: its messages never hold them, and a topic read again from offset 0
after the erasure puts nothing back."""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.bootstrap import build_projector, event_recorder
from eventkeep.projections.readmodels import ReadModels
from eventkeep.replay import audit
from eventkeep.settings import Settings
from tests.api.shopping import PRODUCT, answer, place_order
from tests.api.sinks import files_under, flatten, kafka_messages, postgres_rows, redis_values
from tests.conftest_services import POSTGRES_URL
from tests.projections.test_kafka_pipeline import every_record


class Person:
    """Strings found nowhere but in this test's user."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.email = f"zq{tag}@example.com"
        self.first_name = f"Zelda{tag}"
        self.last_name = f"Quimby{tag}"
        self.phone = f"+44 20 7946 {tag[:4]}"
        self.reason = f"ask {self.first_name} on {self.phone}"

    @property
    def needles(self) -> list[bytes]:
        return [s.encode() for s in (self.email, self.first_name, self.last_name, self.phone)]

    def found_in(self, blob: bytes) -> list[bytes]:
        return [needle for needle in self.needles if needle in blob]


def after(position: int) -> dict[str, str]:
    return {"X-Min-Position": str(position)}


def eventually(found: Callable[[], Any], *, fill: Callable[[], None]) -> Any:
    """`found()` once it is truthy, reading again (`fill`) until then; 30 s at most."""
    deadline = time.monotonic() + 30
    while not (result := found()) and time.monotonic() < deadline:
        fill()
        time.sleep(0.1)
    return result


@pytest.fixture
def log_output(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], bytes]]:
    """Every log record of the run, at every level, as the server would write it."""
    with caplog.at_level(logging.DEBUG):
        yield lambda: "\n".join(
            f"{record.name} {record.getMessage()} {record.exc_text or ''}"
            for record in caplog.records
        ).encode()


def test_an_erased_user_is_found_in_no_sink(
    projected: Wiring,
    feed_settings: Settings | None,
    client: TestClient,
    bearer: Callable[[Role], dict[str, str]],
    tmp_path: Path,
    log_output: Callable[[], bytes],
    capfd: pytest.CaptureFixture[str],
) -> None:
    wiring, home, person = projected, tmp_path / "home", Person()
    admin = bearer(Role.admin)
    user = answer(
        client.post(
            "/v1/users",
            json={
                "email": person.email,
                "first_name": person.first_name,
                "last_name": person.last_name,
            },
        ),
        201,
    )
    product = answer(client.post("/v1/products", json=PRODUCT, headers=admin), 201)
    order = answer(place_order(client, user["id"], product["id"]), 201)
    cancelled = answer(
        client.post(f"/v1/orders/{order['id']}/cancel", json={"reason": person.reason})
    )
    # Read through every path that keeps a copy: the read models, the cache, the history.
    shown = client.get(f"/v1/users/{user['id']}", headers=after(cancelled["position"]))
    assert shown.status_code == 200, shown.text
    assert shown.json()["email"] == person.email
    auditor = bearer(Role.auditor)
    history = client.get(f"/v1/audit/streams/{order['id']}/events", headers=auditor).json()
    assert history["items"][-1]["data"]["reason"] == person.reason  # readable until erased

    def fill_cache() -> None:  # a read at the cache's position fills it
        assert client.get(f"/v1/users/{user['id']}").status_code == 200

    # The search finds what is there: the read models (and cache) hold the user in clear.
    if feed_settings is None:
        assert person.found_in(files_under(home))
    else:
        assert person.found_in(postgres_rows())
        assert eventually(lambda: person.found_in(redis_values()), fill=fill_cache)
        # Kafka never carried them: the relay publishes the sealed form.
        assert person.found_in(kafka_messages(feed_settings)) == []

    erased = answer(client.delete(f"/v1/users/{user['id']}/personal-data", headers=admin))
    gone = client.get(f"/v1/users/{user['id']}", headers=after(erased["position"]))
    assert gone.status_code == 200, gone.text
    assert gone.json()["email"] is None
    history = client.get(f"/v1/audit/streams/{order['id']}/events", headers=auditor).json()
    assert history["items"][-1]["data"]["reason"] is None

    export = io.BytesIO()
    audit.export(wiring.shop.recorder, export, upcasting=True)
    sinks: dict[str, bytes] = {"export": export.getvalue(), "log": log_output()}
    if feed_settings is None:
        sinks["files"] = files_under(home)
    else:
        sinks["postgres"] = postgres_rows()
        sinks["redis"] = redis_values()
        sinks["kafka"] = kafka_messages(feed_settings)
        sinks["kafka replayed"] = replayed_from_offset_zero(feed_settings, wiring)
    output = capfd.readouterr()
    sinks["stdout"] = (output.out + output.err).encode()
    assert {name: person.found_in(blob) for name, blob in sinks.items()} == {
        name: [] for name in sinks
    }


def replayed_from_offset_zero(settings: Settings, wiring: Wiring) -> bytes:
    """Fresh read models fed every message of the topics from offset 0: what a new consumer
    would build after the erasure."""
    prefix = f"rm_replay{uuid.uuid4().hex[:6]}_"
    fresh = ReadModels.open(postgres_url=os.environ[POSTGRES_URL], prefix=prefix)
    fresh.migrate()
    try:
        personal = event_recorder(wiring.shop).personal_data
        projector = build_projector(settings, fresh, personal=personal)
        for records in every_record(settings):
            projector.apply(records)
        dumped = fresh.dump()
        assert dumped["users"], "the replay projected nothing"
        return flatten(dumped)
    finally:
        fresh.drop()
        fresh.close()
