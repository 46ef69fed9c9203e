"""The distributed mode's projector: a Kafka consumer group feeding the read models.

- Offsets live in the read models, not in Kafka: each batch's transaction stores the next
  offset of every partition it read (`offset:<topic>:<partition>`), and a partition assigned
  to this process starts from there. A batch redelivered after a crash was either committed
  with its offsets (and is skipped by stream version) or not at all.
- The relay follows each acknowledged batch with a watermark message on every partition. A
  partition read up to watermark W holds no unapplied event at or below W, so the smallest
  watermark over all partitions (`watermark:<topic>:<partition>`) is a position every event
  up to which is applied: what `X-Min-Position` waits for.
- Offsets are also committed to Kafka after each batch, only so that its tools show the lag.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from eventkeep.eventstore.relay import STREAM_TYPES, WATERMARK_HEADER, RelaySettings, ensure_topics
from eventkeep.metrics import KAFKA_CONSUMER_LAG, observe_applied, observe_idle
from eventkeep.projections.cache import Cache
from eventkeep.projections.readmodels import ReadModels

log = logging.getLogger(__name__)


def offset_key(partition: TopicPartition) -> str:
    return f"offset:{partition.topic}:{partition.partition}"


def watermark_key(partition: TopicPartition) -> str:
    return f"watermark:{partition.topic}:{partition.partition}"


class _StartFromStoredOffsets(ConsumerRebalanceListener):
    def __init__(self, consumer: KafkaConsumer, models: ReadModels) -> None:
        self._consumer = consumer
        self._models = models

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Each partition from the earliest offset any read model stored for it (the others
        skip what they already hold, by stream version)."""
        progress = self._models.progress_by_name().values()
        for partition in assigned:
            key = offset_key(partition)
            offset = min((p[key] for p in progress if key in p), default=None)
            if offset is None:
                self._consumer.seek_to_beginning(partition)
            else:
                self._consumer.seek(partition, offset)
        log.info("projecting partitions %s", sorted((p.topic, p.partition) for p in assigned))


class KafkaProjector:
    def __init__(
        self,
        models: ReadModels,
        cache: Cache,
        settings: RelaySettings,
        *,
        group: str,
        batch_size: int = 2000,
    ) -> None:
        self._models = models
        self._cache = cache
        self._settings = settings
        self._group = group
        self._batch_size = batch_size
        self.stopping = threading.Event()
        self.applied = 0  # events applied by this process, for benchmarks and logs

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        """Consume until stopped; Kafka or PostgreSQL errors are retried, the group re-joined
        (an uncommitted batch is read again from the offsets stored with the read models)."""
        while not self.stopping.is_set():
            try:
                self._consume_until_stopped()
            except (KafkaError, psycopg.OperationalError) as error:
                log.warning("Kafka or PostgreSQL unavailable (%s); retrying", error)
                self.stopping.wait(1.0)
            except Exception:  # a projector must outlive any one failure: log it, start over
                log.exception("projector failed; resuming from the offsets stored with the rows")
                self.stopping.wait(1.0)

    def _consume_until_stopped(self) -> None:
        ensure_topics(self._settings)
        consumer = KafkaConsumer(
            bootstrap_servers=self._settings.bootstrap,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_size,
            fetch_max_bytes=64 * 1024 * 1024,
            # Short timeouts: after a broker restart, a request left hanging on a dead
            # connection is given up after 7 s instead of the default 30.
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            request_timeout_ms=int(self._settings.request_timeout * 1000),
            **self._settings.tls.options(),
        )
        try:
            topics = [self._settings.topic(t) for t in STREAM_TYPES]
            consumer.subscribe(topics, listener=_StartFromStoredOffsets(consumer, self._models))
            self._seed_watermarks(consumer, topics)
            while not self.stopping.is_set():
                records = consumer.poll(timeout_ms=200, max_records=self._batch_size)
                if records:
                    self.apply(records)
                    consumer.commit_async()
                else:
                    self._cache.forget(())  # tombstones a Redis outage held back
                    observe_idle(self._models.names)
                _observe_consumer_lag(consumer)
        finally:
            consumer.close(autocommit=False)

    def _seed_watermarks(self, consumer: KafkaConsumer, topics: list[str]) -> None:
        """Every partition counts in the position, even one no projector has heard from."""
        keys = [
            watermark_key(TopicPartition(topic, partition))
            for topic in topics
            for partition in consumer.partitions_for_topic(topic) or ()
        ]
        self._models.seed_progress(keys)

    def apply(self, records: dict[TopicPartition, list[Any]]) -> None:
        envelopes: list[dict[str, Any]] = []
        progress: dict[str, int] = {}
        for partition, messages in records.items():
            mark = 0
            for message in messages:
                value = orjson.loads(message.value)
                if any(name == WATERMARK_HEADER for name, _ in message.headers):
                    mark = max(mark, value["watermark"])
                else:
                    envelopes.append(value)
                    mark = max(mark, value["position"])
            progress[offset_key(partition)] = messages[-1].offset + 1
            progress[watermark_key(partition)] = mark
        changes = self._models.apply(envelopes, progress)
        self._cache.forget(changes)
        self.applied += len(envelopes)
        observe_applied(self._models.names, envelopes)


def _observe_consumer_lag(consumer: KafkaConsumer) -> None:
    """End offset minus position, for each partition this consumer holds (from the fetch
    responses: no extra request)."""
    for partition in consumer.assignment():
        end = consumer.highwater(partition)
        if end is None:
            continue
        with contextlib.suppress(KafkaError, AssertionError):
            position = consumer.position(partition, timeout_ms=0)
            if position is not None:
                labels = (partition.topic, str(partition.partition))
                KAFKA_CONSUMER_LAG.labels(*labels).set(max(0, end - position))
