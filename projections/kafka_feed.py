"""The distributed mode's projector: a Kafka consumer group feeding the read models.

- Offsets live in the read models, not in Kafka: each batch's transaction stores the next
  offset of every partition it read (`offset:<topic>:<partition>`), and a partition assigned
  to this process starts from there. A batch redelivered after a crash was either committed
  with its offsets (and is skipped by stream version) or not at all.
- The relay follows the events it sends with a watermark on every partition (at most every
  20 ms, and at the log's end): a header of the last event of a batch to a partition, a
  message of its own to a partition the batch sent nothing to. A partition read up to
  watermark W holds no
  unapplied event at or below W, so the smallest watermark over all partitions
  (`watermark:<topic>:<partition>`) is a position every event up to which is applied: what
  `X-Min-Position` waits for. This progress is kept once per feed, not once per read model
  (`ReadModels.record_progress`): every batch moves it for all the read models it feeds.
- Offsets are also committed to Kafka, only so that its tools show the lag: at most once a
  second (`KAFKA_COMMIT_INTERVAL`; a commit per batch was a request and a log append in the
  broker ~35 times a second at P2's load), idle or not.
- Messages carry events as stored, personal fields sealed: each batch is opened with the
  store's data keys (`PersonalData.open_envelopes`; the projector's role may read them), then
  upcast. A field whose key was erased reads as null, so a topic replayed from offset 0 after
  an erasure puts no personal data back in the read models. The keys of streams opened before
  are kept (`OpeningKeys`): a stream's own key only, dropped from the batch that holds its
  erasure on, and all of them whenever partitions are assigned or caught up from the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.feed_mac import refusal
from eventkeep.eventstore.pii import OpeningKeys, PersonalData
from eventkeep.eventstore.relay import (
    CARRIED_WATERMARK_HEADER,
    STREAM_TYPES,
    WATERMARK_HEADER,
    RelaySettings,
    ensure_topics,
)
from eventkeep.metrics import FEED_REJECTED, KAFKA_CONSUMER_LAG, observe_applied, observe_idle
from eventkeep.projections.bulk import CATCH_UP_BATCH, catch_up
from eventkeep.projections.bulk_workers import WORKERS, can_split, in_workers
from eventkeep.projections.cache import Cache
from eventkeep.projections.feed_refusals import RefusedMessage
from eventkeep.projections.log_pages import EnvelopeLog
from eventkeep.projections.readmodels import ReadModels
from eventkeep.projections.tombstones import TombstoneWriter

log = logging.getLogger(__name__)

# Batches whose watermarks wait for their cache tombstones, kept apart (beyond: merged).
_UNSETTLED_KEPT = 64
# Seconds between two commits of the offsets to Kafka (for its tools' lag only: the offsets
# that count are stored with the read models).
KAFKA_COMMIT_INTERVAL = 1.0


def offset_key(partition: TopicPartition) -> str:
    return f"offset:{partition.topic}:{partition.partition}"


def watermark_key(partition: TopicPartition) -> str:
    return f"watermark:{partition.topic}:{partition.partition}"


def cached_key(partition: TopicPartition) -> str:
    """Up to which watermark of the partition the cache's tombstones are written: a query
    with X-Min-Position above the smallest of these reads past the cache."""
    return f"cached:{partition.topic}:{partition.partition}"


class _StartFromStoredOffsets(ConsumerRebalanceListener):
    def __init__(self, consumer: KafkaConsumer, projector: KafkaProjector) -> None:
        self._consumer = consumer
        self._projector = projector

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Each partition from the earliest offset any read model stored for it (the others
        skip what they already hold, by stream version); paused until the projector has
        checked that Kafka still holds that offset (`account_for`: this callback runs in
        the client's IO thread, which may not ask the brokers)."""
        models = self._projector.models
        progress = models.progress_by_name().values()
        for partition in assigned:
            key = offset_key(partition)
            offset = min((p[key] for p in progress if key in p), default=None)
            self._consumer.seek(partition, offset or 0)
            self._projector.pending[partition] = offset
        if assigned:
            self._consumer.pause(*assigned)
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
        store: EnvelopeLog | None = None,
        personal: PersonalData | None = None,
        refused_keep: int = 10_000,
    ) -> None:
        self._models = models
        # Opens the messages' sealed fields (None: no secret, nothing was sealed), with the data
        # keys of the streams it opened before kept (dropped when it sees their erasure).
        self._keys = OpeningKeys(personal) if personal is not None else None
        self._read_sealed = models.read_sealed()
        self._refused_keep = refused_keep  # refused messages kept for the operator
        self._store = store  # the event store: catch-ups Kafka cannot give
        self._cache = cache
        self._settings = settings
        self._group = group
        self._batch_size = batch_size
        self.stopping = threading.Event()
        self._consumed: dict[TopicPartition, int] = {}  # next offset, per partition read
        self.applied = 0  # events applied by this process, for benchmarks and logs
        # The cache's tombstones, written while the next batch is polled and applied.
        self._tombstones = TombstoneWriter(cache)
        # Watermarks whose cache tombstones may still wait (with their hand-over's ticket), and
        # those written (recorded with the next batch, or when idle).
        self._unsettled: list[tuple[int, dict[str, int]]] = []
        self._settled: dict[str, int] = {}
        # Partitions just assigned, with their stored offset, not yet accounted for.
        self.pending: dict[TopicPartition, int | None] = {}

    @property
    def models(self) -> ReadModels:
        return self._models

    def stop(self) -> None:
        self.stopping.set()

    def _refused(self, message: Any) -> RefusedMessage | None:
        """Why the message is refused, if it does not carry the relay's MAC (with the feed key
        set): a forged or altered one is counted, logged, stored (`ReadModels.refused`) and
        never applied (nor moves a position)."""
        key = self._settings.feed_key
        if key is None:
            return None
        reason = refusal(key, message.topic, message.key, message.value, message.headers)
        return None if reason is None else self._refusal(message, reason)

    def _refusal(self, message: Any, reason: str) -> RefusedMessage:
        FEED_REJECTED.labels(message.topic).inc()
        log.error(
            "message %s:%s@%s refused: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        return RefusedMessage(message.topic, message.partition, message.offset, message.key, reason)

    def _settle(self) -> None:
        """Once the cache holds a batch's tombstones (and every earlier one's), its watermarks
        are settled: recorded with the next batch's progress."""
        written = self._tombstones.written
        while self._unsettled and self._unsettled[0][0] <= written:
            self._settled = _never_below(self._settled, self._unsettled.pop(0)[1])

    def account_for(self, consumer: KafkaConsumer) -> None:
        """Resumes the partitions just assigned: each from its stored offset when Kafka still
        holds it. A partition with no stored offset (a new group), or whose stored offset is
        below its beginning (records removed by retention), is never read from wherever
        Kafka starts: its end offset is taken first, then the read models follow the event
        store from their own position to its head (every event published before that end is
        at or below it), then the partition is read from that end (anything older is
        skipped by stream version)."""
        pending: dict[TopicPartition, int | None] = {}
        while self.pending:  # popped one by one: the IO thread may add to it meanwhile
            partition, offset = self.pending.popitem()
            pending[partition] = offset
        pending = {p: o for p, o in pending.items() if p in consumer.assignment()}
        if not pending:
            return
        # Another process may have read these partitions meanwhile, erasures included: the
        # kept keys are asked of the table again (no record of them was applied yet: paused).
        self.forget_kept_keys()
        beginning = consumer.beginning_offsets(list(pending))
        unaccounted = [
            p for p, offset in pending.items() if offset is None or offset < beginning[p]
        ]
        if unaccounted:
            self.catch_up_from_store(consumer, unaccounted)
        consumer.resume(*pending)

    def catch_up_from_store(
        self, consumer: KafkaConsumer, partitions: Sequence[TopicPartition]
    ) -> None:
        """See `account_for`."""
        ends = consumer.end_offsets(list(partitions))
        if self._store is None:  # no store to catch up from: Kafka's oldest, said loudly
            log.error("no event store: partitions %s read from Kafka's oldest", partitions)
            for partition in partitions:
                consumer.seek_to_beginning(partition)
            return
        self.forget_kept_keys()  # the store's events, erasures included, bypass the feed
        start = self._models.position()
        # In bulk (projections/bulk.py): big batches, read and upcast ahead by a thread; far
        # behind on PostgreSQL, in worker processes by stream type (projections/bulk_workers.py).
        forget = lambda changes, _: self._cache.publish(changes)  # noqa: E731
        behind = (self._store.max_notification_id() or 0) - start
        if behind >= CATCH_UP_BATCH and can_split(self._store, self._models, WORKERS):
            reached = in_workers(
                "catch_up",
                self._store,
                self._models,
                forget,
                after=start,
                batch_size=CATCH_UP_BATCH,
            )
        else:
            reached = catch_up(self._store, self._models, start, forget)
        if reached - start >= CATCH_UP_BATCH:
            self._models.tidy()
        self._models.apply([], {offset_key(p): ends[p] for p in partitions})
        for partition in partitions:
            consumer.seek(partition, ends[partition])
        log.warning(
            "partitions %s: stored offsets not in Kafka (a new group or records removed by"
            " retention); caught up from the event store from position %d to %d, Kafka"
            " read on from offsets %s",
            sorted((p.topic, p.partition) for p in partitions),
            start,
            reached,
            {f"{p.topic}:{p.partition}": ends[p] for p in partitions},
        )

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
        self._tombstones.close()  # what the last batches handed over, written

    def _consume_until_stopped(self) -> None:
        ensure_topics(self._settings)
        self.pending.clear()
        consumer = KafkaConsumer(
            group_id=self._group,
            enable_auto_commit=False,
            # Never a silent reset: an offset out of range (records removed by retention while
            # this projector lagged) raises, and the re-joined consumer catches up from the
            # store (on_partitions_assigned).
            auto_offset_reset="none",
            max_poll_records=self._batch_size,
            fetch_max_bytes=64 * 1024 * 1024,
            # Short timeouts: after a broker restart, a request left hanging on a dead
            # connection is given up after 7 s instead of the default 30.
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
            **self._settings.client_options(),
        )
        try:
            topics = [self._settings.topic(t) for t in STREAM_TYPES]
            consumer.subscribe(topics, listener=_StartFromStoredOffsets(consumer, self))
            self._seed_watermarks(consumer, topics)
            committed_at, uncommitted = time.monotonic(), False
            while not self.stopping.is_set():
                records = consumer.poll(timeout_ms=200, max_records=self._batch_size)
                self.account_for(consumer)
                if records:
                    self.apply(records)
                    uncommitted = True
                else:
                    self._tombstones.hand(())  # tombstones a Redis outage held back
                    self._settle()
                    if self._settled:
                        self._models.apply([], self._settled)
                        self._settled = {}
                    observe_idle(self._models.names)
                now = time.monotonic()
                if uncommitted and now - committed_at >= KAFKA_COMMIT_INTERVAL:
                    consumer.commit_async()
                    committed_at, uncommitted = now, False
                self._observe_consumer_lag(consumer)
        finally:
            consumer.close(autocommit=False)

    def _seed_watermarks(self, consumer: KafkaConsumer, topics: list[str]) -> None:
        """Every partition counts in the position, even one no projector has heard from; the
        progress of topics it no longer reads (a former topic prefix) counts no more."""
        self._models.forget_feeds_except(topics)
        keys = [
            key(TopicPartition(topic, partition))
            for topic in topics
            for partition in consumer.partitions_for_topic(topic) or ()
            for key in (watermark_key, cached_key)
        ]
        self._models.seed_progress(keys)

    def _observe_consumer_lag(self, consumer: KafkaConsumer) -> None:
        """End offset (from the last fetch response: no request) minus the next offset this
        projector applies, for each partition it holds."""
        for partition in consumer.assignment():
            end = consumer.highwater(partition)
            consumed = self._consumed.get(partition)
            if end is not None and consumed is not None:
                labels = (partition.topic, str(partition.partition))
                KAFKA_CONSUMER_LAG.labels(*labels).set(max(0, end - consumed))

    def apply(self, records: dict[TopicPartition, list[Any]]) -> None:
        envelopes: list[dict[str, Any]] = []
        progress: dict[str, int] = {}
        marks: dict[str, int] = {}
        refused: list[RefusedMessage] = []
        for partition, messages in records.items():
            self._consumed[partition] = messages[-1].offset + 1
            mark = 0
            for message in messages:
                if (refusal := self._refused(message)) is not None:
                    refused.append(refusal)
                    continue
                value = orjson.loads(message.value)
                if any(name == WATERMARK_HEADER for name, _ in message.headers):
                    # Signed, but the MAC covers the topic, not the partition: a copy of a
                    # real watermark sent to another partition is refused by what it names.
                    if value.get("partition") != message.partition:
                        named = value.get("partition")
                        refused.append(self._refusal(message, f"watermark for partition {named}"))
                        continue
                    mark = max(mark, value["watermark"])
                else:
                    envelopes.append(value)
                    mark = max(mark, value["position"], carried_watermark(message))
            progress[offset_key(partition)] = messages[-1].offset + 1
            progress[watermark_key(partition)] = mark
            marks[cached_key(partition)] = mark
        envelopes = [upcast(envelope) for envelope in self._opened(envelopes)]
        # Before the batch's offsets are stored: a crash in between stores them again, once.
        self._models.record_refused(refused, self._refused_keep)
        changes = self._models.apply(envelopes, progress | self._settled)
        self._settled = {}
        self._unsettled.append((self._tombstones.hand(changes), marks))
        if len(self._unsettled) > _UNSETTLED_KEPT:  # Redis away: the oldest two kept as one
            (_, first), (ticket, second) = self._unsettled[:2]
            self._unsettled[:2] = [(ticket, _never_below(first, second))]
        self._settle()
        self.applied += len(envelopes)
        observe_applied(self._models.names, envelopes)

    def _opened(self, envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._keys is None or not envelopes:
            return envelopes
        # Only the event types a read model reads the personal fields of: a stock adjustment's
        # reason (which nothing shows) cost a data-key query per batch at P2's load.
        return self._keys.open_envelopes(envelopes, only=self._read_sealed)

    def forget_kept_keys(self) -> None:
        if self._keys is not None:
            self._keys.clear()


def carried_watermark(message: Any) -> int:
    """The watermark an event's message carries for its own partition (0: none)."""
    for name, header in message.headers:
        if name == CARRIED_WATERMARK_HEADER:
            position, _, partition = header.decode().partition(":")
            if partition == str(message.partition):
                return int(position)
    return 0


def _never_below(settled: dict[str, int], marks: dict[str, int]) -> dict[str, int]:
    return settled | {k: max(v, settled.get(k, 0)) for k, v in marks.items()}
