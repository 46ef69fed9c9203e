"""The distributed read side on real PostgreSQL, Kafka and Redis: whatever is killed or
restarted — a relay, a projector, Kafka itself — the read models end equal to a rebuild from
the event store, and a redelivered partition changes nothing."""

from __future__ import annotations

import copy
import itertools
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from pydantic import SecretStr
from typer.testing import CliRunner

from eventkeep.api import cli
from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.bootstrap import (
    build_projector,
    build_relay,
    event_recorder,
    kafka_tls,
    projector_read_models,
)
from eventkeep.eventstore.relay import CARRIED_WATERMARK_HEADER, STREAM_TYPES, WATERMARK_HEADER
from eventkeep.projections import kafka_feed
from eventkeep.projections.kafka_feed import KAFKA_COMMIT_INTERVAL, carried_watermark
from eventkeep.projections.readmodels import ReadModels
from eventkeep.replay.rebuild import rebuild
from eventkeep.settings import Settings
from tests.api.conftest import distributed_settings, distributed_wiring
from tests.api.shopping import answer, create_product, pay, place_order, register
from tests.conftest_services import KAFKA_BOOTSTRAP, POSTGRES_URL, require_env, services
from tests.eventstore.test_personal_data import CountingKeys
from tests.faults.load import (
    Load,
    assert_the_store_tells_the_truth,
    recovered_within,
    until_kafka_serves_groups,
)
from tests.faults.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    unique = uuid.uuid4().hex[:10]
    return distributed_settings(tmp_path / "home").model_copy(
        update={
            "kafka_bootstrap": require_env(KAFKA_BOOTSTRAP),
            "topic_prefix": f"t{unique}",
            "topic_partitions": 2,
            "projector_group": f"g{unique}",
        }
    )


@pytest.fixture
def wiring(tmp_path: Path) -> Iterator[Wiring]:
    built = distributed_wiring(tmp_path / "home")
    yield built
    built.close()


@pytest.fixture
def client(wiring: Wiring) -> Iterator[TestClient]:
    admin = wiring.keys.create(Role.admin, "pipeline test").secret_key
    with TestClient(create_app(wiring), headers={"Authorization": f"Bearer {admin}"}) as client:
        yield client


class Threads:
    """Relays and projectors run in this process, stopped at the end of the test."""

    def __init__(self) -> None:
        self.running: list[tuple[Any, threading.Thread]] = []

    def start(self, worker: Any) -> Any:
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.running.append((worker, thread))
        return worker

    def stop_all(self) -> None:
        for worker, _ in self.running:
            worker.stop()
        for _, thread in self.running:
            thread.join(30)


@pytest.fixture
def threads() -> Iterator[Threads]:
    started = Threads()
    yield started
    started.stop_all()


@pytest.fixture
def projector_models(settings: Settings) -> Iterator[ReadModels]:
    """The read models on the projector's own role's connection (the query side's only reads)."""
    models = projector_read_models(settings)
    yield models
    models.close()


def traffic(client: TestClient, rounds: int) -> None:
    """Users, products and orders: placed, paid, cancelled after payment, shipped."""
    for _ in range(rounds):
        user = register(client, f"{uuid.uuid4().hex[:12]}@example.com")
        product = create_product(client, sku=uuid.uuid4().hex[:12], stock=100)
        orders = [answer(place_order(client, user["id"], product["id"], 1), 201) for _ in range(3)]
        for order in orders[:2]:
            pay(client, order["id"], "49.90")
        answer(client.post(f"/v1/orders/{orders[0]['id']}/cancel", json={"reason": "changed"}))
        answer(client.post(f"/v1/orders/{orders[1]['id']}/ship", json={"tracking_number": "T1"}))


def wait_until_projected(wiring: Wiring, timeout: float = 180) -> None:
    head = wiring.shop.recorder.max_notification_id() or 0
    deadline = time.monotonic() + timeout
    while wiring.queries.models.position() < head:
        assert time.monotonic() < deadline, (
            f"read models at {wiring.queries.models.position()}, log at {head}"
        )
        time.sleep(0.2)


def rebuilt(wiring: Wiring) -> dict[str, list[dict[str, Any]]]:
    """The read models as a fresh rebuild from the event store makes them."""
    fresh = ReadModels.open(postgres_url=require_env(POSTGRES_URL), prefix="rebuilt_")
    try:
        rebuild(wiring.shop.recorder, fresh)
        return fresh.dump()
    finally:
        fresh.drop()
        fresh.close()


def assert_equal_to_rebuild(wiring: Wiring) -> None:
    wait_until_projected(wiring)
    live = wiring.queries.models.dump()
    assert live["orders"] and live["daily_sales"]
    assert live == rebuilt(wiring)


def every_record(settings: Settings) -> Iterator[dict[TopicPartition, list[Any]]]:
    """Each partition of the test's topics read again from offset 0, in poll-sized batches."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        **kafka_tls(settings).options(),
    )
    partitions = [
        TopicPartition(f"{settings.topic_prefix}.{stream_type}", number)
        for stream_type in STREAM_TYPES
        for number in range(settings.topic_partitions)
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    try:
        while any(consumer.position(p) < ends[p] for p in partitions):
            if records := consumer.poll(timeout_ms=1000):
                yield records
    finally:
        consumer.close()


def test_a_partition_replayed_from_offset_zero_changes_nothing(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
) -> None:
    threads.start(build_relay(settings, wiring.shop))
    personal = event_recorder(wiring.shop).personal_data
    projector = threads.start(build_projector(settings, projector_models, personal=personal))
    traffic(client, rounds=5)
    wait_until_projected(wiring)
    before = wiring.queries.models.dump()
    for records in every_record(settings):
        projector.apply(records)  # the same messages, delivered again
    assert wiring.queries.models.dump() == before
    assert before == rebuilt(wiring)


def test_a_watermark_rides_on_the_last_event_to_each_partition_and_moves_it(
    settings: Settings, wiring: Wiring, client: TestClient, projector_models: ReadModels
) -> None:
    """A watermark round sends a message of its own only to the partitions its batch sent
    no event to; the others' last event carries it, and a projector reading them all has
    every partition, and so the read models, at the watermark. Products only: the User and
    Order partitions are quiet."""
    for _ in range(4):
        create_product(client, sku=uuid.uuid4().hex[:12], stock=5)
    relay = build_relay(settings, wiring.shop)
    events = list(relay._log.select_notifications(1, 10_000))
    head = events[-1].id
    producer = relay._producer()
    try:
        futures, covered = relay._send(producer, events, head)
        futures += relay._send_watermarks(producer, head, covered)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(timeout=5)
    messages = [m for records in every_record(settings) for ms in records.values() for m in ms]
    partitions = len(STREAM_TYPES) * settings.topic_partitions
    own = [m for m in messages if any(name == WATERMARK_HEADER for name, _ in m.headers)]
    carrying = [m for m in messages if carried_watermark(m)]
    assert covered and {topic for topic, _ in covered} == {f"{settings.topic_prefix}.Product"}
    assert len(own) == partitions - len(covered)
    assert sorted((m.topic, m.partition) for m in carrying) == sorted(covered)
    assert len(messages) == len(events) + len(own)
    personal = event_recorder(wiring.shop).personal_data
    projector = build_projector(settings, projector_models, personal=personal)
    for records in every_record(settings):
        projector.apply(records)
    for name in projector_models.names:
        progress = projector_models.progress(name)
        marks = {k: v for k, v in progress.items() if k.startswith("watermark:")}
        assert len(marks) == partitions and set(marks.values()) == {head}
    assert projector_models.position() == head


def test_a_projector_commits_its_offsets_to_kafka_at_most_once_a_second(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The offsets that count are stored with the read models; Kafka's copy (for its tools'
    lag) is committed at most once a second however many batches come, and reaches the
    applied offsets once the feed is quiet."""
    commits: list[float] = []
    real_commit = KafkaConsumer.commit_async

    def commit_async(consumer: KafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        commits.append(time.monotonic())
        return real_commit(consumer, *args, **kwargs)

    monkeypatch.setattr(KafkaConsumer, "commit_async", commit_async)
    threads.start(build_relay(settings, wiring.shop))
    projector = build_projector(settings, projector_models, store=wiring.shop.recorder)
    batches: list[float] = []
    real_apply = projector.apply

    def apply(records: dict[TopicPartition, list[Any]]) -> None:
        batches.append(time.monotonic())
        real_apply(records)

    monkeypatch.setattr(projector, "apply", apply)
    threads.start(projector)
    traffic(client, rounds=1)
    wait_until_projected(wiring)  # the group joined, the first offsets stored
    del commits[:], batches[:]
    traffic(client, rounds=6)
    wait_until_projected(wiring)
    assert len(batches) > 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(commits)]
    assert all(gap >= KAFKA_COMMIT_INTERVAL * 0.9 for gap in gaps), gaps
    assert len(commits) < len(batches)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.projector_group,
        enable_auto_commit=False,
        **kafka_tls(settings).options(),
    )
    try:
        partitions = [
            TopicPartition(f"{settings.topic_prefix}.{stream_type}", number)
            for stream_type in STREAM_TYPES
            for number in range(settings.topic_partitions)
        ]
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + 30  # a commit within a second of the last batch
        while any((consumer.committed(p) or 0) < ends[p] for p in partitions):
            assert time.monotonic() < deadline, "Kafka's offsets never reached the end"
            time.sleep(0.2)
    finally:
        consumer.close()


def test_a_carried_watermark_moves_only_the_partition_it_was_sent_to() -> None:
    def message(partition: int, header: bytes) -> Any:
        return SimpleNamespace(partition=partition, headers=[(CARRIED_WATERMARK_HEADER, header)])

    assert carried_watermark(message(3, b"120:3")) == 120
    assert carried_watermark(message(4, b"120:3")) == 0  # copied to another partition
    assert carried_watermark(SimpleNamespace(partition=3, headers=[("position", b"9")])) == 0


def test_a_projector_asks_for_a_data_key_only_for_what_it_shows_once_per_stream(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
) -> None:
    """The data-key table is asked only for the streams whose personal fields a read model
    shows (a user's email and names; not a stock adjustment's, a deactivation's or an order
    cancellation's reason, which stay sealed), and once per stream while the projector holds
    its partition (a later email change opens with the key it kept); the read models still
    end equal to a rebuild, an erasure included."""
    threads.start(build_relay(settings, wiring.shop))
    personal = copy.copy(event_recorder(wiring.shop).personal_data)
    assert personal is not None
    table = personal._keys = CountingKeys(personal._keys)
    threads.start(build_projector(settings, projector_models, personal=personal))
    traffic(client, rounds=2)  # orders cancelled with a reason among them
    kept, erased = register(client, "kept@example.com"), register(client, "gone@example.com")
    product = create_product(client, sku=uuid.uuid4().hex[:12], stock=10)
    for _ in range(3):
        stock = {"delta": 1, "reason": "recount by Ada"}
        answer(client.post(f"/v1/products/{product['id']}/stock", json=stock))
    answer(client.post(f"/v1/users/{kept['id']}/deactivate", json={"reason": "moved away"}))
    wait_until_projected(wiring)
    answer(client.post(f"/v1/users/{kept['id']}/email", json={"email": "new@example.com"}))
    answer(client.delete(f"/v1/users/{erased['id']}/personal-data"))

    assert_equal_to_rebuild(wiring)
    users = {row["id"]: row for row in wiring.queries.models.dump()["users"]}
    assert users[kept["id"]]["email"] == "new@example.com"
    assert users[erased["id"]]["email"] is None
    asked = [stream for streams in table.asked for stream in streams]
    assert set(asked) <= set(users)  # users only: no product's, no order's
    assert len(asked) == len(set(asked)) == len(users)  # each once


def cached_position(models: ReadModels) -> int:
    """Up to which watermark every partition's cache tombstones are written (`cached:`)."""
    return min(
        value
        for progress in models.progress_by_name().values()
        for key, value in progress.items()
        if key.startswith("cached:")
    )


def test_a_projector_applies_its_batches_while_redis_is_silent(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
) -> None:
    """Redis silent (connections open, no answer; its timeout set to 30 s): the projector
    goes on applying batches, their tombstones waiting in a thread of their own, while its
    `cached:` watermarks stay where they were (X-Min-Position reads past the cache); once
    Redis answers, the tombstones are written and those watermarks reach the head."""
    assert settings.redis_url is not None
    proxy = TcpProxy.to(settings.redis_url.get_secret_value())
    through = settings.model_copy(
        update={
            "redis_url": SecretStr(proxy.url(settings.redis_url.get_secret_value())),
            "redis_timeout": 30.0,
        }
    )
    try:
        threads.start(build_relay(settings, wiring.shop))
        personal = event_recorder(wiring.shop).personal_data
        threads.start(build_projector(through, projector_models, personal=personal))
        create_product(client, sku=uuid.uuid4().hex[:12])
        wait_until_projected(wiring)
        head = wiring.shop.recorder.max_notification_id() or 0
        deadline = time.monotonic() + 30
        while cached_position(projector_models) < head:  # Redis in use through the proxy
            assert time.monotonic() < deadline, "tombstones never written"
            time.sleep(0.1)

        proxy.freeze()
        for _ in range(3):
            create_product(client, sku=uuid.uuid4().hex[:12])
        wait_until_projected(wiring, timeout=10)  # a batch waiting for Redis would take 30 s
        head = wiring.shop.recorder.max_notification_id() or 0
        assert cached_position(projector_models) < head

        proxy.thaw()
        deadline = time.monotonic() + 30
        while cached_position(projector_models) < head:
            assert time.monotonic() < deadline, "tombstones not written after Redis answered"
            time.sleep(0.1)
    finally:
        proxy.close()


def process_env(settings: Settings) -> dict[str, str]:
    return os.environ | {
        "EVENTKEEP_POSTGRES_URL": require_env(POSTGRES_URL),
        "EVENTKEEP_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "EVENTKEEP_CLAIM_SECRET": "test-secret-9f3Kq2xV7mZ1bR8tL4wN6yH0",
        "EVENTKEEP_HOME": str(settings.home),
        "EVENTKEEP_TOPIC_PREFIX": settings.topic_prefix,
        "EVENTKEEP_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "EVENTKEEP_PROJECTOR_GROUP": settings.projector_group,
    }


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen]]:
    started: list[subprocess.Popen] = []

    def spawn(command: str) -> subprocess.Popen:
        log = tmp_path / f"{command}-{len(started)}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                ["eventkeep", command], env=process_env(settings), stdout=output, stderr=output
            )
        process.log = log  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_relays_and_projectors_killed_and_restarted_lose_and_double_nothing(
    wiring: Wiring, client: TestClient, processes: Callable[[str], subprocess.Popen]
) -> None:
    relay = processes("relay")
    standby = processes("relay")
    projectors = [processes("project"), processes("project")]  # one consumer group
    traffic(client, rounds=4)
    wait_until_projected(wiring)

    relay.kill()  # SIGKILL: no chance to save anything; the standby takes the lock
    projectors[0].kill()
    traffic(client, rounds=4)
    projectors[0] = processes("project")
    traffic(client, rounds=2)
    assert_equal_to_rebuild(wiring)

    deadline = time.monotonic() + 30
    while "projecting partitions" not in projectors[0].log.read_text():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the restarted projector never joined the group"
        time.sleep(0.2)

    for process in (standby, *projectors):
        process.send_signal(signal.SIGTERM)
    assert [process.wait(timeout=30) for process in (standby, *projectors)] == [0, 0, 0]


def _pipeline_working(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
) -> int:
    """A relay and a projector running, and a first command seen through them: the position
    the fault's load starts after."""
    store = wiring.shop.recorder
    threads.start(build_relay(settings, wiring.shop))
    threads.start(build_projector(settings, projector_models, store=store))
    traffic(client, rounds=1)
    wait_until_projected(wiring)  # the pipeline works before the fault
    return store.max_notification_id() or 0


def test_kafka_stopped_and_started_while_commands_flow(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
) -> None:
    """Commands keep succeeding while Kafka is down (the log is the outbox); within 10 s of
    Kafka serving consumers again (its group coordinator loaded) the relay publishes and the
    projector applies what waited."""
    start = _pipeline_working(settings, wiring, client, threads, projector_models)
    load = Load(client).start()
    try:
        load.wait_for(5)
        services("down", "kafka")
        try:
            during = len(load.acked)
            load.wait_for(during + 10)  # acknowledged while Kafka is down
        finally:
            services("up", "kafka")
        until_kafka_serves_groups(settings)
        recovered_within(10, client, wiring, load)
    finally:
        load.stop()
    assert load.refused == load.unknown == 0
    assert_the_store_tells_the_truth(wiring, load, start)
    traffic(client, rounds=1)  # and the pipeline goes on
    assert_equal_to_rebuild(wiring)


def test_postgresql_restarted_twice_while_commands_and_the_projector_run(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
) -> None:
    """A real restart of PostgreSQL (every connection of every part killed) under load: the
    API, relay and projector work again within 10 s of PostgreSQL answering, without being
    restarted; every acknowledged command is in the store and the read models, nothing refused
    was written."""
    start = _pipeline_working(settings, wiring, client, threads, projector_models)
    load = Load(client).start()
    try:
        for _ in range(2):
            load.wait_for(len(load.acked) + 5)
            services("down", "postgres")
            try:
                time.sleep(2)  # commands are refused meanwhile
            finally:
                services("up", "postgres")
            recovered_within(10, client, wiring, load)
    finally:
        load.stop()
    assert_the_store_tells_the_truth(wiring, load, start)
    traffic(client, rounds=1)  # and the pipeline goes on
    assert_equal_to_rebuild(wiring)


# --- continuity (issue 8 items 1 and 7) ----------------------------------------------------


def partitions(settings: Settings) -> list[TopicPartition]:
    return [
        TopicPartition(f"{settings.topic_prefix}.{stream_type}", number)
        for stream_type in STREAM_TYPES
        for number in range(settings.topic_partitions)
    ]


def wait_until_published(relay: Any, wiring: Wiring, timeout: float = 60) -> None:
    head = wiring.shop.recorder.max_notification_id() or 0
    deadline = time.monotonic() + timeout
    while getattr(relay, "published", 0) < head:
        assert time.monotonic() < deadline, "the relay never published the log"
        time.sleep(0.1)


def tidied_since(models: ReadModels, moment: datetime) -> dict[str, bool]:
    """Each of `models`' tables: vacuumed and analysed by hand (not autovacuum) since `moment`."""
    tables = [models.table(name) for model in models.models.values() for name in model.tables()]
    with psycopg.connect(require_env(POSTGRES_URL), autocommit=True) as connection:
        found = connection.execute(
            "SELECT relname, last_vacuum >= %s AND last_analyze >= %s"
            " FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            (moment, moment, tables),
        ).fetchall()
    return {table: bool(tidied) for table, tidied in found}


def test_records_removed_by_retention_before_a_lagging_projector_reads_them(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every catch-up from the store counts as a bulk one (the feed then tidies its tables).
    monkeypatch.setattr(kafka_feed, "CATCH_UP_BATCH", 1)
    store = wiring.shop.recorder
    relay = threads.start(build_relay(settings, wiring.shop))
    projector = threads.start(build_projector(settings, projector_models, store=store))
    traffic(client, rounds=2)
    wait_until_projected(wiring)
    projector.stop()  # it lags from here
    traffic(client, rounds=3)
    wait_until_published(relay, wiring)

    # Retention removes every record the lagging projector has not read.
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, **kafka_tls(settings).options()
    )
    ends = consumer.end_offsets(partitions(settings))
    consumer.close()
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **kafka_tls(settings).options()
    )
    try:
        admin.delete_records({p: end for p, end in ends.items() if end > 0})
    finally:
        admin.close()

    caught_up_from = datetime.now(UTC)
    threads.start(build_projector(settings, projector_models, store=store))
    traffic(client, rounds=1)  # and Kafka is read on after the catch-up
    assert_equal_to_rebuild(wiring)
    # ... and the tables it loaded were vacuumed and analysed then: autovacuum would otherwise
    # take them up under the live feed's first batches (docs/performance.md, P2).
    tidied = tidied_since(projector_models, caught_up_from)
    assert tidied and all(tidied.values()), tidied


def test_a_new_topic_prefix_leaves_no_frozen_position(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
) -> None:
    store = wiring.shop.recorder
    threads.start(build_relay(settings, wiring.shop))
    first = threads.start(build_projector(settings, projector_models, store=store))
    traffic(client, rounds=1)
    wait_until_projected(wiring)
    first.stop()

    # Disaster recovery with Kafka wiped: the deployment moves to new topics.
    unique = uuid.uuid4().hex[:10]
    moved = settings.model_copy(
        update={"topic_prefix": f"t{unique}", "projector_group": f"g{unique}"}
    )
    threads.start(build_relay(moved, wiring.shop))
    threads.start(build_projector(moved, projector_models, store=store))
    traffic(client, rounds=1)
    wait_until_projected(wiring, timeout=60)  # the old topics' watermarks hold nothing back
    assert not [
        key
        for progress in projector_models.progress_by_name().values()
        for key in progress
        if key.startswith(("offset:", "watermark:")) and settings.topic_prefix in key
    ]
    assert_equal_to_rebuild(wiring)


# --- the trusted feed (issue 10 item 4) ------------------------------------------------------


def test_forged_and_altered_messages_are_refused_and_counted(
    settings: Settings,
    wiring: Wiring,
    client: TestClient,
    threads: Threads,
    projector_models: ReadModels,
    tmp_path: Path,
) -> None:
    from kafka import KafkaProducer

    from eventkeep.bootstrap import relay_settings
    from eventkeep.eventstore.feed_mac import sign
    from eventkeep.eventstore.relay import WATERMARK_HEADER, message_of
    from eventkeep.metrics import FEED_REJECTED

    store = wiring.shop.recorder
    threads.start(build_relay(settings, wiring.shop))
    threads.start(build_projector(settings, projector_models, store=store))
    traffic(client, rounds=1)
    wait_until_projected(wiring)
    topic = f"{settings.topic_prefix}.Product"
    refused = FEED_REJECTED.labels(topic)._value.get()

    # A forged product (a new stream, signed with a wrong key), an altered copy of a real
    # event (its price changed, the relay's MAC kept), a forged watermark far ahead, and a
    # watermark signed as the relay signs one, for partition 1, sent to partition 0.
    real = store.select_notifications(0, 1000)
    [created] = [e for e in real if e.stream_type == "Product"][:1]
    key, value, headers = message_of(created)
    feed_key = relay_settings(settings).feed_key
    assert feed_key is not None
    signed = [*headers, ("ek-mac", sign(feed_key, topic, key, value, headers))]
    copied = orjson.dumps({"watermark": 10**12, "partition": 1})
    copied_headers = [(WATERMARK_HEADER, b"1")]
    copied_headers.append(("ek-mac", sign(feed_key, topic, None, copied, copied_headers)))
    forged_id = str(uuid.uuid4())
    forged = orjson.loads(value) | {"stream_id": forged_id}
    altered = orjson.loads(value) | {"data": orjson.loads(value)["data"] | {"price": "0.01"}}
    options = kafka_tls(settings).options()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **options)
    try:
        sent = [
            producer.send(
                topic,
                key=forged_id.encode(),
                value=orjson.dumps(forged),
                headers=[*headers, ("ek-mac", b"\0" * 32)],
            ),
            producer.send(topic, key=key, value=orjson.dumps(altered), headers=signed),
            producer.send(
                topic,
                value=orjson.dumps({"watermark": 10**12}),
                partition=0,
                headers=[(WATERMARK_HEADER, b"1")],
            ),
            producer.send(topic, value=copied, partition=0, headers=copied_headers),
        ]
        producer.flush(10)
        for future in sent:
            future.get(10)
    finally:
        producer.close()

    deadline = time.monotonic() + 30
    while FEED_REJECTED.labels(topic)._value.get() < refused + 4:
        assert time.monotonic() < deadline, "the forged messages were never refused"
        time.sleep(0.1)
    # Each refusal is kept for the operator, with its reason, and listed by the CLI (stored
    # just after it was counted: polled).
    where = [(meta.partition, meta.offset) for meta in (future.get(0) for future in sent)]

    def kept_rows() -> dict[tuple[int, int], dict[str, Any]]:
        rows = projector_models.refused()
        return {(r["partition"], r["offset"]): r for r in rows if r["topic"] == topic}

    while not set(where) <= set(kept := kept_rows()):
        assert time.monotonic() < deadline, f"the refusals were never stored: {kept}"
        time.sleep(0.1)
    forged_row, altered_row, watermark_row, copied_row = (kept[place] for place in where)
    assert forged_row["key"] == forged_id and "does not verify" in forged_row["reason"]
    assert altered_row["key"] == key.decode() and "does not verify" in altered_row["reason"]
    assert watermark_row["key"] is None and watermark_row["reason"] == "no MAC"
    assert copied_row["reason"] == "watermark for partition 1"
    # The CLI's own home (its chain key file), not the working directory's.
    home = {"EVENTKEEP_HOME": str(tmp_path / "cli-home")}
    listed = CliRunner().invoke(cli.app, ["replay", "refused", "list", "--json"], env=home)
    assert listed.exit_code == 0, listed.output
    rows = [orjson.loads(line) for line in listed.output.splitlines()]
    assert forged_row in rows and watermark_row in rows
    traffic(client, rounds=1)  # the feed goes on
    assert_equal_to_rebuild(wiring)
    assert projector_models["products"].get(forged_id) is None
    head = store.max_notification_id()
    assert wiring.queries.models.position() <= head  # no forged watermark moved it
