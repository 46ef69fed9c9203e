"""The relay on the real PostgreSQL and Kafka: everything published, per-stream order kept,
nothing lost across a crash, a standby takeover or a Kafka outage (at-least-once: a re-send
is possible and consumers drop it by stream version)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from eventkeep.eventstore.kafka_tls import KafkaTLS
from eventkeep.eventstore.postgres import PostgresApplicationRecorder
from eventkeep.eventstore.records import RecordedEvent
from eventkeep.eventstore.relay import (
    WATERMARK_HEADER,
    Relay,
    RelayCursor,
    RelaySettings,
    discard_producer,
    ensure_topics,
)
from tests.conftest_services import services
from tests.eventstore.stores import postgres_log

pytestmark = pytest.mark.services
TABLE = "relay_test_events"


@pytest.fixture
def log() -> Iterator[PostgresApplicationRecorder]:
    with postgres_log(TABLE) as recorder:
        yield recorder


@pytest.fixture
def settings(kafka_bootstrap: str) -> RelaySettings:
    return RelaySettings(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=3,
        tls=KafkaTLS.from_environment(),  # TLS when infra/services runs Kafka with it
    )


def append(log: PostgresApplicationRecorder, streams: int, versions: int) -> None:
    for stream in [uuid.uuid4() for _ in range(streams)]:
        for version in range(1, versions + 1):
            log.insert_events(
                [
                    RecordedEvent(
                        stream,
                        version,
                        "ProductStockAdjusted",
                        orjson.dumps({"delta": version, "reason": "test"}),
                        "Product",
                        1,
                        datetime.now(UTC),
                    )
                ],
                metadata={"actor": "test", "correlation_id": "c", "causation_id": None},
            )


def start(relay: Relay) -> threading.Thread:
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    return thread


def consume(settings: RelaySettings, expected: int, timeout: float = 60) -> list[dict]:
    """Every message of the test's topics, from the beginning, until `expected` positions."""
    consumer = KafkaConsumer(
        settings.topic("Product"),
        bootstrap_servers=settings.bootstrap,
        group_id=f"g{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **settings.tls.options(),
    )
    messages: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len({m["position"] for m in messages}) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                messages.extend(
                    orjson.loads(r.value) for r in records if not is_watermark(r.headers)
                )
    finally:
        consumer.close()
    return messages


def is_watermark(headers: list[tuple[str, bytes]]) -> bool:
    return any(name == WATERMARK_HEADER for name, _ in headers)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def assert_complete_and_ordered(messages: list[dict], expected: int) -> None:
    """All positions present; per stream, what a consumer would apply comes in version order
    (a re-sent message carries a version already applied and is dropped)."""
    assert {m["position"] for m in messages} == set(range(1, expected + 1))
    applied: dict[str, int] = {}
    for message in messages:
        version, last = message["stream_version"], applied.get(message["stream_id"], 0)
        if version <= last:
            continue
        assert version == last + 1
        applied[message["stream_id"]] = version


def test_publishes_every_event_with_stream_key_and_envelope(
    log: PostgresApplicationRecorder, settings: RelaySettings, postgres_url: str
) -> None:
    append(log, streams=20, versions=5)
    relay = Relay(log, postgres_url, settings)
    thread = start(relay)
    messages = consume(settings, 100)
    relay.stop()
    thread.join(10)
    assert len(messages) == 100
    assert_complete_and_ordered(messages, 100)
    first = messages[0]
    assert set(first) >= {
        "position",
        "stream_id",
        "stream_type",
        "stream_version",
        "event_type",
        "schema_version",
        "recorded_at",
        "data",
        "metadata",
    }
    assert first["recorded_at"].endswith("Z")


def test_crash_between_publish_and_cursor_save_loses_nothing(
    log: PostgresApplicationRecorder,
    settings: RelaySettings,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    append(log, streams=10, versions=3)
    crashed = threading.Event()
    original_save = RelayCursor.save

    def crash_once(self: RelayCursor, position: int) -> None:
        if not crashed.is_set():
            crashed.set()
            raise SystemExit("relay killed after publishing, before saving its cursor")
        original_save(self, position)

    monkeypatch.setattr(RelayCursor, "save", crash_once)
    first = Relay(log, postgres_url, settings)
    with pytest.raises(SystemExit):
        first.run()
    append(log, streams=5, versions=2)
    second = Relay(log, postgres_url, settings)
    thread = start(second)
    messages = consume(settings, 40)
    second.stop()
    thread.join(10)
    assert_complete_and_ordered(messages, 40)
    assert len(messages) >= 40  # the first batch was sent twice: consumers drop the copy


def test_standby_takes_over_when_the_active_relay_dies(
    log: PostgresApplicationRecorder, settings: RelaySettings, postgres_url: str
) -> None:
    active, standby = Relay(log, postgres_url, settings), Relay(log, postgres_url, settings)
    active_thread = start(active)
    wait_for(active.is_active.is_set)
    standby_thread = start(standby)
    time.sleep(1.5)
    assert not standby.is_active.is_set()
    append(log, streams=3, versions=2)
    active.stop()
    active_thread.join(10)
    wait_for(standby.is_active.is_set)
    append(log, streams=3, versions=2)
    messages = consume(settings, 12)
    standby.stop()
    standby_thread.join(10)
    assert_complete_and_ordered(messages, 12)


def test_kafka_outage_delays_but_loses_nothing(
    log: PostgresApplicationRecorder, settings: RelaySettings, postgres_url: str
) -> None:
    published: list[int] = []
    relay = Relay(log, postgres_url, settings, on_published=published.append)
    thread = start(relay)
    append(log, streams=5, versions=2)
    wait_for(lambda: bool(published) and published[-1] == 10)
    services("down", "kafka")
    try:
        append(log, streams=5, versions=2)  # commands keep succeeding: the log is the outbox
        time.sleep(2)
        assert published[-1] == 10
    finally:
        services("up", "kafka")
    wait_for(lambda: published[-1] == 20, timeout=120)
    messages = consume(settings, 20)
    relay.stop()
    thread.join(10)
    assert_complete_and_ordered(messages, 20)


def test_a_producer_holding_records_when_kafka_stops_is_discarded_without_error(
    settings: RelaySettings,
) -> None:
    """The relay once died here: closing such a producer flushes, and the flush fails."""
    ensure_topics(settings)
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=2000,
        max_block_ms=2000,
        **settings.tls.options(),
    )
    producer.partitions_for(settings.topic("User"))  # metadata known: sends only queue
    services("down", "kafka")
    try:
        producer.send(settings.topic("User"), b"pending")  # nothing can take it now
        discard_producer(producer, timeout=1)
    finally:
        services("up", "kafka")


def test_kafka_stopped_and_started_while_batches_are_in_flight(
    log: PostgresApplicationRecorder, settings: RelaySettings, postgres_url: str
) -> None:
    """Events appended without pause, in batches of 3 sent before the previous ones are
    acknowledged, while Kafka stops and starts: what was in flight is sent again from the
    acknowledged position, nothing skipped, reordered or lost."""
    relay = Relay(log, postgres_url, replace(settings, batch_size=3))
    thread = start(relay)
    stop = threading.Event()
    appended: list[int] = []

    def write() -> None:
        while not stop.is_set():
            append(log, streams=1, versions=3)
            appended.append(3)
            time.sleep(0.01)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        wait_for(lambda: (relay.published or 0) >= 30)
        services("down", "kafka")
        try:
            time.sleep(2)  # appends go on: the log is the outbox
        finally:
            services("up", "kafka")
        time.sleep(2)  # and after Kafka is back
    finally:
        stop.set()
        writer.join(10)
    total = sum(appended)
    wait_for(lambda: relay.published == total, timeout=120)
    messages = consume(settings, total)
    relay.stop()
    thread.join(10)
    assert_complete_and_ordered(messages, total)


def watermarks(settings: RelaySettings, head: int, timeout: float = 60) -> dict[int, list[int]]:
    """The watermarks of each partition of the Product topic, until each one reached `head`."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        **settings.tls.options(),
    )
    topic = settings.topic("Product")
    partitions = [TopicPartition(topic, n) for n in range(settings.partitions)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    marks: dict[int, list[int]] = {n: [] for n in range(settings.partitions)}
    deadline = time.monotonic() + timeout
    try:
        while any(not m or m[-1] < head for m in marks.values()):
            assert time.monotonic() < deadline, f"watermarks never reached {head}: {marks}"
            for partition, records in consumer.poll(timeout_ms=500).items():
                marks[partition.partition] += [
                    orjson.loads(r.value)["watermark"] for r in records if is_watermark(r.headers)
                ]
    finally:
        consumer.close()
    return marks


def test_watermarks_are_spaced_while_batches_keep_coming_and_reach_the_head_when_idle(
    log: PostgresApplicationRecorder, settings: RelaySettings, postgres_url: str
) -> None:
    """Ten batches back to back (the log written before the relay starts), with watermarks
    at most every 5 s: sent after the first batch and at the log's end once the interval has
    passed (a third set only if the ten batches took over 5 s), not on every partition after
    every batch; every partition's last one is the head."""
    append(log, streams=10, versions=5)
    relay = Relay(log, postgres_url, replace(settings, batch_size=5, watermark_interval=5))
    thread = start(relay)
    try:
        marks = watermarks(settings, head=50)
    finally:
        relay.stop()
        thread.join(10)
    assert all(values[-1] == 50 for values in marks.values())
    assert all(len(values) <= 3 for values in marks.values()), marks  # ten before
