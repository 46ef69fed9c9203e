"""Raw baselines of the read path (B4, B5 of docs/performance.md), measured in the same run as the
workloads they judge: Kafka with no processing, and a bare primary-key SELECT."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import psycopg
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from eventkeep.bench.report import Histogram
from eventkeep.eventstore.kafka_tls import KafkaTLS

ENVELOPE: dict[str, Any] = {
    "position": 1,
    "stream_id": str(uuid.uuid4()),
    "stream_type": "Product",
    "stream_version": 7,
    "event_type": "ProductStockReserved",
    "schema_version": 1,
    "recorded_at": "2026-11-24T12:00:00.000000Z",
    "data": {"order_id": str(uuid.uuid4()), "quantity": 2},
    "metadata": {"actor": "key-1", "correlation_id": "c" * 32, "causation_id": None},
}


def b4_kafka_produce_consume(
    bootstrap: str, messages: int, partitions: int = 6, tls: KafkaTLS | None = None
) -> dict[str, float]:
    """Envelopes like the relay's, produced idempotently with acks=all, then consumed (over
    TLS when `tls` names a CA, as the relay's are)."""
    security = (tls or KafkaTLS()).options()
    topic = f"bench-b4-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **security)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    value = orjson.dumps(ENVELOPE)
    keys = [uuid.uuid4().bytes for _ in range(1000)]
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, **security
    )
    started = time.perf_counter()
    for i in range(messages):
        producer.send(topic, key=keys[i % len(keys)], value=value)
    producer.flush()
    produced = messages / (time.perf_counter() - started)
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_poll_records=5000,
        **security,
    )
    seen = 0
    started = time.perf_counter()
    while seen < messages:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                orjson.loads(record.value)
            seen += sum(1 for _ in records)
    consumed = messages / (time.perf_counter() - started)
    consumer.close()
    admin.delete_topics([topic])
    admin.close()
    return {"produced_per_s": produced, "consumed_per_s": consumed}


def b5_primary_key_selects(url: str, rows: int, seconds: float) -> tuple[float, Histogram]:
    """One connection, `SELECT … WHERE id = $1` over a table of `rows` JSON documents."""
    table = f"bench_b5_{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4() for _ in range(rows)]
    document = orjson.dumps(ENVELOPE["data"]).decode()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE UNLOGGED TABLE {table} (id uuid PRIMARY KEY, doc jsonb)")
        with connection.cursor().copy(f"COPY {table} (id, doc) FROM STDIN") as copy:
            for row_id in ids:
                copy.write_row((row_id, document))
        connection.execute(f"ANALYZE {table}")
        histogram = Histogram()
        query = f"SELECT doc FROM {table} WHERE id = %s"
        done = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            connection.execute(query, (ids[done % rows],), prepare=True).fetchone()
            histogram.record(time.perf_counter() - began)
            done += 1
        rate = done / (time.perf_counter() - started)
        connection.execute(f"DROP TABLE {table}")
    return rate, histogram
