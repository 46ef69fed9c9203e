"""Per-stream continuity and the quarantine (issue 8 items 1-2), in both modes: a projection
applies a stream's event N+1 only after N, filling a gap from the event store; an event it
cannot apply is set aside with its stream, the rest goes on, and queries of that stream say so."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.bootstrap import build_projector, build_relay, projector_read_models
from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.metrics import GAPS, QUARANTINED
from eventkeep.projections.log_feed import fill_from
from eventkeep.projections.readmodels import LOG, ReadModels
from eventkeep.replay.rebuild import rebuild
from tests.api.conftest import distributed_settings
from tests.api.shopping import answer, create_product
from tests.conftest_services import KAFKA_BOOTSTRAP, require_env


@pytest.fixture
def store(wiring: Wiring) -> Any:
    assert wiring.built is not None
    return wiring.built.recorder


@pytest.fixture
def fresh(wiring: Wiring, store: Any) -> Iterator[Callable[[], ReadModels]]:
    """Read models of their own prefix in the mode's read-model database."""
    made: list[ReadModels] = []

    def make() -> ReadModels:
        models = ReadModels(
            wiring.queries.models.db, f"t{uuid.uuid4().hex[:8]}_", fill=fill_from(store)
        )
        models.migrate()
        made.append(models)
        return models

    yield make
    for models in made:
        models.drop()


def envelopes(store: Any, stream_id: str) -> list[dict[str, Any]]:
    return [upcast(to_envelope(event)) for event in store.stream_history(stream_id)]


def rebuilt(store: Any, make: Callable[[], ReadModels]) -> dict[str, list[dict[str, Any]]]:
    models = make()
    rebuild(store, models)
    return models.dump()


def test_a_gap_is_filled_from_the_store_and_a_late_event_skipped(
    client: TestClient, bearer: Callable[[Role], dict[str, str]], store: Any, fresh: Any
) -> None:
    admin = bearer(Role.admin)
    product = create_product(client, sku=f"GAP-{uuid.uuid4().hex[:6]}")
    for price in ("2.00", "3.00"):
        answer(
            client.post(
                f"/v1/products/{product['id']}/price",
                json={"price": price, "currency": "EUR"},
                headers=admin,
            )
        )
    v1, v2, v3 = envelopes(store, product["id"])
    models = fresh()
    gaps = GAPS.labels("products")._value.get()

    models.apply([v1], {LOG: v1["position"]})
    models.apply([v3], {LOG: v3["position"]})  # v2 not seen: filled from the store
    models.apply([v2], {LOG: v3["position"]})  # late: already applied

    assert GAPS.labels("products")._value.get() == gaps + 1
    row = models["products"].get(product["id"])
    assert row is not None and (row["version"], row["price"]) == (3, "3.00")
    rows = models.dump()["products"]
    assert [r for r in rows if r["id"] == product["id"]] == [
        r for r in rebuilt(store, fresh)["products"] if r["id"] == product["id"]
    ]


def test_a_poison_event_is_quarantined_with_its_stream_and_retried_after_a_fix(
    client: TestClient,
    bearer: Callable[[Role], dict[str, str]],
    store: Any,
    fresh: Any,
    wiring: Wiring,
) -> None:
    admin = bearer(Role.admin)
    products = [create_product(client, sku=f"Q{i}-{uuid.uuid4().hex[:6]}") for i in range(6)]
    for product in products:
        path = f"/v1/products/{product['id']}"
        body = {"price": "2.00", "currency": "EUR"}
        answer(client.post(f"{path}/price", json=body, headers=admin))
        for delta in (5, -3):
            body = {"delta": delta, "reason": "count"}
            answer(client.post(f"{path}/stock", json=body, headers=admin))
    events = sorted(
        (e for p in products for e in envelopes(store, p["id"])), key=lambda e: e["position"]
    )
    poisoned = products[2]["id"]
    # What the read model cannot hold (as a stored event planted past the domain's bounds
    # would be): version 2 of one product priced beyond a 64-bit number of cents.
    at = next(
        i for i, e in enumerate(events) if e["stream_id"] == poisoned and e["stream_version"] == 2
    )
    events[at] = events[at] | {"data": events[at]["data"] | {"price": "9" * 30}}
    models = fresh()
    counted = QUARANTINED.labels("products")._value.get()

    models.apply(events, {LOG: events[-1]["position"]})  # one batch: split to find the poison

    quarantine = models.quarantine()
    assert [
        (q["projection"], q["stream_id"], q["stream_version"])
        for q in quarantine
        if q["projection"] == "products"
    ] == [("products", poisoned, v) for v in (2, 3, 4)]
    # The first carries the error (PostgreSQL's or SQLite's); the later ones wait behind it.
    assert quarantine[0]["error"].startswith(("NumericValueOutOfRange", "OverflowError"))
    assert all("earlier event of its stream" in q["error"] for q in quarantine[1:])
    assert QUARANTINED.labels("products")._value.get() == counted + 3
    for product in products:  # everything else applied
        row = models["products"].get(product["id"])
        assert row is not None
        assert row["version"] == (1 if product["id"] == poisoned else 4)
    # Later events of the stream wait behind it.
    assert models.quarantined_streams()["products"][poisoned]["stream_version"] == 2

    # The fix: the store holds the good event; retry applies the stream from the store.
    applied, changes = models.retry("products")
    assert applied == {"products": 3} and {c.id for c in changes} == {poisoned}
    assert models.quarantine() == []
    expected = rebuilt(store, fresh)
    ids = {p["id"] for p in products}
    assert [r for r in models.dump()["products"] if r["id"] in ids] == [
        r for r in expected["products"] if r["id"] in ids
    ]


def test_a_quarantined_users_event_keeps_no_personal_data_in_the_quarantine(
    client: TestClient, store: Any, fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine names the event (stream, version, position, type, error) but holds no
    copy of its data: the event may carry personal data, opened, which an erasure would not
    reach there; a retry reads the event from the store."""
    from eventkeep.projections.readmodel import ReadModel

    email = f"quarantined-{uuid.uuid4().hex[:8]}@example.com"
    user = answer(
        client.post("/v1/users", json={"email": email, "first_name": "Zebedee", "last_name": "Q"}),
        201,
    )
    events = envelopes(store, user["id"])
    fold = ReadModel._fold

    def buggy(self: ReadModel, batch: Any, event: Any) -> None:
        if event["stream_id"] == user["id"]:
            raise ValueError("a bug in the projection")
        fold(self, batch, event)

    monkeypatch.setattr(ReadModel, "_fold", buggy)
    models = fresh()
    models.apply(events, {LOG: events[-1]["position"]})

    assert [q["stream_id"] for q in models.quarantine()] == [user["id"]]
    with models.db.reading() as cursor:
        cursor.execute(f"SELECT event FROM {models.table('quarantine')}")
        stored = " ".join(str(row["event"]) for row in cursor.fetchall())
    assert user["id"] in stored
    assert email not in stored and "Zebedee" not in stored


def test_poison_events_among_10_000_are_quarantined_and_everything_else_applied(
    wiring: Wiring, store: Any, fresh: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 10,000 events seeded in bulk (a shop's users, products and orders), applied in
    the projector's batches: an event the read model cannot hold and events a projection bug
    fails on, spread from early to late, are set aside with the later events of their streams;
    everything else is applied; after the fix, `retry` makes the read models equal a rebuild."""
    from eventkeep.bench.seed import Seeder, SeedSizes
    from eventkeep.projections.readmodel import ReadModel

    assert wiring.built is not None
    sizes = SeedSizes(users=300, products=200, orders=3000, per_save=500)
    Seeder(wiring.built.bus, sizes, seed=8).run(lambda phase, done: None)
    events = [upcast(to_envelope(e)) for e in store.select_notifications(1, 100_000)]
    assert len(events) >= 10_000
    later = [e for e in events if e["stream_version"] >= 2]
    bugs = {
        (e["stream_id"], e["stream_version"])
        for e in (later[len(later) // 3], later[len(later) // 2], later[-50])
    }
    # The read model cannot hold it: a product created at a price beyond 64-bit cents.
    created = [i for i, e in enumerate(events) if e["event_type"] == "ProductCreated"]
    at = created[len(created) // 2]
    events[at] = events[at] | {"data": events[at]["data"] | {"price": "9" * 30}}
    poisoned = bugs | {(events[at]["stream_id"], 1)}
    fold = ReadModel._fold

    def buggy(self: ReadModel, batch: Any, event: Any) -> None:
        if (event["stream_id"], event["stream_version"]) in bugs:
            raise ValueError("a bug in the projection")
        fold(self, batch, event)

    monkeypatch.setattr(ReadModel, "_fold", buggy)
    models = fresh()
    for first in range(0, len(events), 500):  # the projector's batch size
        batch = events[first : first + 500]
        models.apply(batch, {LOG: batch[-1]["position"]})

    first_bad = dict(poisoned)
    expected = {
        (model.name, e["stream_id"], e["stream_version"])
        for model in models.models.values()
        for e in events
        if e["stream_type"] == model.stream_type
        and e["stream_version"] >= first_bad.get(e["stream_id"], 1 << 62)
    }
    quarantine = models.quarantine()
    assert {(q["projection"], q["stream_id"], q["stream_version"]) for q in quarantine} == expected
    causes = {
        q["error"].split(":")[0]
        for q in quarantine
        if (q["stream_id"], q["stream_version"]) in poisoned
    }
    # The bug's error, and PostgreSQL's or SQLite's for the price.
    assert causes in ({"ValueError", "NumericValueOutOfRange"}, {"ValueError", "OverflowError"})

    monkeypatch.undo()  # the fix
    models.retry()
    assert models.quarantine() == []
    assert models.dump() == rebuilt(store, fresh)


def test_a_quarantined_stream_answers_503_stream_quarantined(
    client: TestClient,
    bearer: Callable[[Role], dict[str, str]],
    projected: Wiring,
    store: Any,
) -> None:
    product = create_product(client, sku=f"QQ-{uuid.uuid4().hex[:6]}")
    [created] = envelopes(store, product["id"])
    models = projected.queries.models
    with models.db.transaction() as cursor:
        models._quarantine(cursor, "products", created, "OverflowError: test")
    try:
        deadline = time.monotonic() + 10
        while True:
            response = client.get(f"/v1/products/{product['id']}")
            if response.status_code == 503 or time.monotonic() > deadline:
                break
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "STREAM_QUARANTINED"
        assert error["details"]["stream_id"] == product["id"]
        status = client.get("/v1/projections", headers=bearer(Role.admin)).json()
        [products] = [p for p in status["projections"] if p["name"] == "products"]
        assert [q["stream_id"] for q in products["quarantined"]] == [product["id"]]
    finally:
        with models.db.transaction() as cursor:
            cursor.execute(
                f"DELETE FROM {models.table('quarantine')} WHERE stream_id = %s", (product["id"],)
            )


# --- read-your-writes with any cache (issue 8 item 5) ------------------------------------------


@pytest.fixture
def cut_off(wiring: Wiring, tmp_path: Path) -> Iterator[Wiring]:
    """The wiring projected with the projector unable to reach Redis (its URL: a closed
    port) while the API reads through the real one; embedded: its in-process feed."""
    if wiring.feed is not None:
        yield wiring
        return
    unique = uuid.uuid4().hex[:10]
    settings = distributed_settings(tmp_path / "home").model_copy(
        update={
            "kafka_bootstrap": require_env(KAFKA_BOOTSTRAP),
            "topic_prefix": f"t{unique}",
            "topic_partitions": 2,
            "projector_group": f"g{unique}",
        }
    )
    assert settings.redis_url is not None  # the API's cache is Redis
    models = projector_read_models(settings)
    nowhere = settings.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:9/1")})
    assert wiring.built is not None
    workers = [
        build_relay(settings, wiring.shop),
        build_projector(nowhere, models, store=wiring.built.recorder),
    ]
    threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    wiring.min_position_wait = 15  # the first events through new topics are slow
    yield wiring
    for worker in workers:
        worker.stop()
    for thread in threads:
        thread.join(15)
    models.close()


def read(client: TestClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_x_min_position_never_answers_an_older_cached_version(
    client: TestClient, bearer: Callable[[Role], dict[str, str]], cut_off: Wiring
) -> None:
    admin = bearer(Role.admin)
    product = create_product(client, sku=f"RYW-{uuid.uuid4().hex[:6]}")
    path = f"/v1/products/{product['id']}"
    for round_ in range(5):
        price = f"{round_ + 2}.00"
        # Read at the last write: the answer (now cached) is that version.
        wanted = {"X-Min-Position": str(product["position"])}
        assert read(client, path, wanted)["version"] >= product["version"]
        assert read(client, path, wanted)["version"] >= product["version"]
        body = {"price": price, "currency": "EUR"}
        product = answer(client.post(f"{path}/price", json=body, headers=admin))
        # The projector cannot tell the cache; the read still answers the new version.
        after = read(client, path, {"X-Min-Position": str(product["position"])})
        assert (after["version"], after["price"]) == (product["version"], price)


# --- concurrent writers ----------------------------------------------------------------------


def test_a_tailing_reader_and_the_read_models_under_8_concurrent_writers(
    client: TestClient,
    bearer: Callable[[Role], dict[str, str]],
    projected: Wiring,
    store: Any,
    fresh: Callable[[], ReadModels],
) -> None:
    """8 writers change products at once while a LogFollower tails the log: the reader sees
    every event once, in position order, and the live read models end equal to a rebuild."""
    import random

    from eventkeep.eventstore.log_follower import LogFollower

    admin = bearer(Role.admin)
    projected.min_position_wait = 30
    start = store.max_notification_id() or 0
    seen: list[int] = []
    stop = threading.Event()
    follower = LogFollower(store, start, batch_size=50, stopping=stop)

    def tail() -> None:
        for batch in follower.batches():
            seen.extend(event.id for event in batch)
            follower.advance_to(batch[-1].id)

    reader = threading.Thread(target=tail, daemon=True)
    reader.start()
    products = [create_product(client, sku=f"C{i}-{uuid.uuid4().hex[:6]}") for i in range(8)]

    def write(product: dict[str, Any]) -> None:
        for n in range(15):
            time.sleep(random.random() * 0.01)
            body = {"delta": 1, "reason": f"count {n}"}
            response = client.post(f"/v1/products/{product['id']}/stock", json=body, headers=admin)
            assert response.status_code == 200, response.text

    writers = [threading.Thread(target=write, args=(p,)) for p in products]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(120)
    head = store.max_notification_id()
    deadline = time.monotonic() + 60
    while (not seen or seen[-1] < head) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    follower.stop()
    reader.join(10)
    logged = [e.id for e in store.select_notifications(start, 100_000, inclusive_of_start=False)]
    assert seen == logged  # nothing missed, nothing twice, in order

    last = max(p["position"] for p in products)
    response = client.get("/v1/products", headers={"X-Min-Position": str(head)})
    assert response.status_code == 200, (last, response.text)
    ids = {p["id"] for p in products}
    live = [r for r in projected.queries.models.dump()["products"] if r["id"] in ids]
    assert [r["stock"] for r in live] == [10 + 15] * 8
    assert live == [r for r in rebuilt(store, fresh)["products"] if r["id"] in ids]


# --- fast recovery (issue 8 item 7, the read side) ---------------------------------------------


@pytest.mark.parametrize("wiring", ["distributed"], indirect=True)  # the embedded feed has neither
def test_the_projector_works_again_within_10_s_of_redis_and_postgresql_coming_back(
    wiring: Wiring,
    client: TestClient,
    bearer: Callable[[Role], dict[str, str]],
    tmp_path: Path,
) -> None:
    """The projector reaches Redis and its read models' PostgreSQL through TCP proxies the
    test cuts: while either is down reads at a write's position still answer it (Redis) or
    wait (PostgreSQL); within 10 s of each coming back the read models and the cache's
    settled position reach the log's head. (The embedded feed has neither.)"""
    from eventkeep.projections.readmodels import cache_position_of
    from tests.faults.tcp_proxy import TcpProxy

    unique = uuid.uuid4().hex[:10]
    settings = distributed_settings(tmp_path / "home").model_copy(
        update={
            "kafka_bootstrap": require_env(KAFKA_BOOTSTRAP),
            "topic_prefix": f"t{unique}",
            "topic_partitions": 2,
            "projector_group": f"g{unique}",
        }
    )
    assert settings.redis_url is not None and settings.postgres_url is not None
    redis_proxy = TcpProxy.to(settings.redis_url.get_secret_value())
    postgres_proxy = TcpProxy.to(settings.postgres_url.get_secret_value())
    proxied_redis = redis_proxy.url(settings.redis_url.get_secret_value())
    proxied_pg = postgres_proxy.url(settings.postgres_url.get_secret_value())
    projector_settings = settings.model_copy(
        update={"redis_url": SecretStr(proxied_redis), "postgres_url": SecretStr(proxied_pg)}
    )
    models = projector_read_models(projector_settings)
    assert wiring.built is not None
    workers = [
        build_relay(settings, wiring.shop),
        build_projector(projector_settings, models, store=wiring.built.recorder),
    ]
    threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    wiring.min_position_wait = 15
    admin = bearer(Role.admin)

    def settled() -> int:
        return min(cache_position_of(p) for p in wiring.queries.models.progress_by_name().values())

    def within_10_s(done: Callable[[], bool]) -> float:
        began = time.monotonic()
        while not done():
            assert time.monotonic() - began < 10, "not working again within 10 s"
            time.sleep(0.05)
        return time.monotonic() - began

    try:
        product = create_product(client, sku=f"REC-{uuid.uuid4().hex[:6]}")
        path = f"/v1/products/{product['id']}"
        read(client, path, {"X-Min-Position": str(product["position"])})
        # The projector goes through them (its first use of Redis follows its first commit).
        within_10_s(lambda: bool(redis_proxy._pairs and postgres_proxy._pairs))
        with redis_proxy.down():
            product = answer(
                client.post(
                    f"{path}/price", json={"price": "7.00", "currency": "EUR"}, headers=admin
                )
            )
            shown = read(client, path, {"X-Min-Position": str(product["position"])})
            assert shown["price"] == "7.00"
            time.sleep(1)
        head = wiring.shop.recorder.max_notification_id() or 0
        within_10_s(lambda: settled() >= head)

        with postgres_proxy.down():
            product = answer(
                client.post(
                    f"{path}/price", json={"price": "8.00", "currency": "EUR"}, headers=admin
                )
            )
            time.sleep(3)
        head = wiring.shop.recorder.max_notification_id() or 0
        within_10_s(lambda: wiring.queries.models.position() >= head)
        assert read(client, path, {"X-Min-Position": str(head)})["price"] == "8.00"
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(15)
        models.close()
        redis_proxy.close()
        postgres_proxy.close()
