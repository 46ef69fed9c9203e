"""The real Kafka broker of infra/services, used the way the relay and the projectors use it.

An idempotent producer (`acks='all'`) writes keyed messages to a new 3-partition topic; a
consumer group reads them back with auto-commit off and commits afterwards. Every message must
arrive exactly once, each key on one partition, in the order it was sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from eventkeep.eventstore.kafka_tls import KafkaTLS

pytestmark = pytest.mark.services

# TLS (with a client certificate) when infra/services runs Kafka with it.
TLS = KafkaTLS.from_environment().options()
PARTITIONS = 3
KEYS = 40
PER_KEY = 100
MESSAGES = KEYS * PER_KEY
DEADLINE_SECONDS = 60


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic (auto-creation is off on the broker), deleted afterwards."""
    name = f"eventkeep-services-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="eventkeep-tests", **TLS)
    try:
        admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
        yield name
    finally:
        admin.delete_topics([name])
        admin.close()


def encode(key: str, seq: int) -> bytes:
    return json.dumps({"key": key, "seq": seq}).encode()


def produce(bootstrap: str, topic: str) -> dict[str, int]:
    """Sends PER_KEY messages for each of KEYS keys, interleaved; returns each key's partition."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        **TLS,
    )
    try:
        futures = [
            (key, producer.send(topic, key=key.encode(), value=encode(key, seq)))
            for seq in range(PER_KEY)
            for key in (f"stream-{k}" for k in range(KEYS))
        ]
        producer.flush(timeout=DEADLINE_SECONDS)
        partitions: dict[str, set[int]] = defaultdict(set)
        for key, future in futures:
            partitions[key].add(future.get(timeout=DEADLINE_SECONDS).partition)
    finally:
        producer.close()
    assert all(len(p) == 1 for p in partitions.values()), "a key was spread over partitions"
    return {key: p.pop() for key, p in partitions.items()}


def test_idempotent_producer_and_consumer_group_deliver_each_message_once_in_key_order(
    kafka_bootstrap: str, topic: str
) -> None:
    partition_of = produce(kafka_bootstrap, topic)
    assert len(set(partition_of.values())) > 1, "all keys hashed to one partition"

    group = f"eventkeep-tests-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **TLS,
    )
    received: list[tuple[str, int, int]] = []  # (key, seq, partition)
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(received) < MESSAGES and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    value = json.loads(record.value)
                    assert record.key == value["key"].encode()
                    received.append((value["key"], value["seq"], record.partition))
        consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        end_offsets = consumer.end_offsets(partitions)
        committed = {tp: consumer.committed(tp) for tp in partitions}
    finally:
        consumer.close()

    assert len(received) == MESSAGES, f"received {len(received)} of {MESSAGES}"
    assert len(set((key, seq) for key, seq, _ in received)) == MESSAGES, "duplicates"
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, seq, partition in received:
        assert partition == partition_of[key]
        by_key[key].append(seq)
    assert by_key == {key: list(range(PER_KEY)) for key in partition_of}, "per-key order broken"
    # The group's committed position is the end of each partition: nothing left to redeliver.
    assert committed == end_offsets
    assert sum(end_offsets.values()) == MESSAGES
