"""The relay: follows the global log in position order and publishes every event to Kafka.

- Topic per stream type (`<prefix>.<StreamType>`), created with a fixed partition count
  (adding partitions later would remap keys and break per-stream order); key = stream id, so
  each stream stays ordered within its partition; value = the export envelope as stored
  (orjson): its stored schema version, personal fields sealed (`eventstore/pii.py`) — the relay
  never opens them, so a topic holds no personal data in clear and an erasure (the key's
  deletion) reaches every copy; projectors open, then upcast. Headers `event_type`,
  `schema_version`, `position`.
- Idempotent producer with `acks=all`. Batches are pipelined (`_Pipeline`): the next one is
  read and sent while Kafka acknowledges the previous ones; the durable cursor only ever
  moves to a position Kafka acknowledged in full (saved at most every 0.1 s): a crash re-sends
  what came after it (at-least-once); consumers drop what they already applied by stream
  version. A failed send rewinds to the acknowledged position and sends everything after it
  again.
- A watermark on every partition at most every 20 ms while events come, and at the log's end
  (`projections/kafka_feed.py` explains how projectors turn them into a position for
  read-your-writes): carried by the last event a batch sends to a partition (header
  `watermark_at`: `<position>:<partition>`), a message of its own on the partitions the
  batch sends nothing to.
- One active relay: the one holding a PostgreSQL advisory lock on its own connection. Others
  stand by and take over when that connection dies with its process. The active relay sends a
  heartbeat on that connection every `heartbeat` seconds; a standby that finds the lock's
  session silent for `lease_seconds` (a frozen process or network: its TCP connection may look
  alive for hours) ends that session (`pg_terminate_backend`, allowed between sessions of the
  same role) and takes the lock. The cursor is fenced: it only ever moves forward, so a former
  leader that wakes up cannot move it back.
- Kafka unreachable: commands keep succeeding (the log is the outbox); the relay backs off,
  recreates its producer and resumes from its cursor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from eventkeep.domain.catalog import STREAM_TYPES  # the one spelling: "User", "Product", …
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.feed_mac import FEED_MAC_HEADER, sign
from eventkeep.eventstore.kafka_tls import KafkaTLS
from eventkeep.eventstore.log_follower import GlobalLog, LogFollower
from eventkeep.eventstore.records import LoggedEvent
from eventkeep.metrics import RELAY_ACTIVE, RELAY_PUBLISHED

log = logging.getLogger(__name__)

RELAY_LOCK = "eventkeep relay"
# The producer waits this long for more records before it sends a partition's batch.
_LINGER = 0.005
# A message with this header is no event: `{"watermark": P}` says every event of this
# partition at or below position P came before it.
WATERMARK_HEADER = "watermark"
# An event with this header carries a watermark (`<position>:<partition>`, the partition it
# was sent to: copied to another one, it moves nothing there).
CARRIED_WATERMARK_HEADER = "watermark_at"


@dataclass(frozen=True)
class RelaySettings:
    bootstrap: str
    topic_prefix: str = "eventkeep"
    partitions: int = 6
    batch_size: int = 1000
    poll_interval: float = 0.02  # the log is polled this often when idle: P2's latency floor
    # While batches keep coming, watermarks go out at most this often (and at the log's end).
    watermark_interval: float = 0.02
    # The durable cursor is saved at most this often (a crash re-sends what came after it).
    cursor_interval: float = 0.1
    max_backoff: float = 5.0
    heartbeat: float = 2.0  # the active relay's heartbeat on its lock's connection
    lease_seconds: float = 15.0  # a lock's session silent this long is ended by a standby
    # Seconds a Kafka request (and a producer's wait for metadata or buffer room) may take;
    # a consumer's must exceed its 6 s session timeout (EVENTKEEP_KAFKA_REQUEST_TIMEOUT).
    request_timeout: float = 7.0
    # A client's longest wait between attempts to reconnect to a broker. kafka-python's own
    # (30 s, doubling from 50 ms) let a projector sleep half a minute after Kafka came back;
    # capped so that every client is working again within 10 s of a restart.
    reconnect_backoff_max: float = 1.0
    # Plaintext unless the settings name a CA (eventstore/kafka_tls.py).
    tls: KafkaTLS = field(default_factory=KafkaTLS)
    # Signs each message (eventstore/feed_mac.py); projectors holding it verify each one.
    feed_key: bytes | None = field(default=None, repr=False)

    def topic(self, stream_type: str) -> str:
        return f"{self.topic_prefix}.{stream_type}"

    def client_options(self) -> dict[str, Any]:
        """kafka-python's keyword arguments every client (producer, consumer, admin) takes."""
        return {
            "bootstrap_servers": self.bootstrap,
            "request_timeout_ms": int(self.request_timeout * 1000),
            "reconnect_backoff_max_ms": int(self.reconnect_backoff_max * 1000),
            **self.tls.options(),
        }


class StoredLog(Protocol):
    """The event store's log, read as stored (`decrypt=False`: personal fields sealed)."""

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
        decrypt: bool = True,
    ) -> Sequence[LoggedEvent]: ...


class _Sealed:
    """The log as the relay follows it: never opened."""

    def __init__(self, log: StoredLog) -> None:
        self._log = log

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[LoggedEvent]:
        return self._log.select_notifications(
            start, limit, stop, topics, inclusive_of_start=inclusive_of_start, decrypt=False
        )


def message_of(event: LoggedEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of an event's Kafka message (the event as stored)."""
    envelope = to_envelope(event)
    headers = [
        ("event_type", envelope["event_type"].encode()),
        ("schema_version", str(envelope["schema_version"]).encode()),
        ("position", str(event.position).encode()),
    ]
    return str(event.originator_id).encode(), orjson.dumps(envelope), headers


class RelayCursor:
    """The relay's durable position, in PostgreSQL next to the log it follows."""

    def __init__(self, connection: psycopg.Connection[Any], name: str) -> None:
        self._connection = connection
        self._name = name
        # A save is not flushed to disk before it returns (the lock's session only saves
        # this cursor): a PostgreSQL crash may lose the last saves, which re-sends a little
        # (at-least-once); waiting for each flush held the relay's loop ~10 ms under load.
        connection.execute("SET synchronous_commit = off")
        # Created when missing only: the relay's role may not create tables (`eventkeep db
        # roles` makes this one as the owner).
        exists = connection.execute("SELECT to_regclass('eventkeep_relay_cursor')").fetchone()
        if not (exists and exists[0]):
            connection.execute(
                "CREATE TABLE IF NOT EXISTS eventkeep_relay_cursor"
                " (name text PRIMARY KEY, position bigint NOT NULL)"
            )

    def load(self) -> int:
        row = self._connection.execute(
            "SELECT position FROM eventkeep_relay_cursor WHERE name = %s", (self._name,)
        ).fetchone()
        return row[0] if row else 0

    def save(self, position: int) -> None:
        """Moves the cursor to `position` if that is forward (a former leader's late save of
        an older position changes nothing)."""
        self._connection.execute(
            "INSERT INTO eventkeep_relay_cursor (name, position) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
            " WHERE eventkeep_relay_cursor.position < EXCLUDED.position",
            (self._name, position),
        )


class Relay:
    def __init__(
        self,
        log_reader: StoredLog,
        postgres_url: str,
        settings: RelaySettings,
        *,
        on_published: Callable[[int], None] = lambda position: None,
    ) -> None:
        self._log: GlobalLog = _Sealed(log_reader)
        self._postgres_url = postgres_url
        self._settings = settings
        self._on_published = on_published
        self.stopping = threading.Event()
        self.is_active = threading.Event()
        self.published: int | None = None  # the last position Kafka acknowledged (metrics)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        """Stand by until this relay holds the lock, then publish until stopped."""
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self._postgres_url, autocommit=True) as connection:
                    if not self._lead(connection, self._settings):
                        self.stopping.wait(self._settings.poll_interval * 5)
                        continue
                    self.is_active.set()
                    RELAY_ACTIVE.set(1)
                    log.info("relay active")
                    heartbeat = threading.Thread(
                        target=self._heartbeat, args=(connection,), name="relay-heartbeat"
                    )
                    heartbeat.daemon = True
                    heartbeat.start()
                    self._publish_until_stopped(
                        RelayCursor(connection, self._settings.topic_prefix)
                    )
            except psycopg.OperationalError as error:
                log.warning("relay lost PostgreSQL (%s); retrying", error)
                self.stopping.wait(self._settings.max_backoff)
            except Exception:  # a relay must outlive any one failure: log it, start over
                log.exception("relay failed; starting over from its durable position")
                self.stopping.wait(self._settings.max_backoff)
            finally:
                self.is_active.clear()
                RELAY_ACTIVE.set(0)

    @staticmethod
    def _lead(connection: psycopg.Connection[Any], settings: RelaySettings) -> bool:
        """One relay per topic prefix: the holder of this session-level lock. A holder whose
        session has been silent for `lease_seconds` is ended first."""
        key = f"{RELAY_LOCK} {settings.topic_prefix}"
        row = connection.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        if row and row[0]:
            return True
        # The lock's holder, if its session has been idle (no heartbeat) for the lease. A
        # one-key advisory lock shows its key's high and low 32 bits as classid and objid.
        silent = connection.execute(
            "WITH k AS (SELECT hashtext(%s)::bigint AS v)"
            " SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, k"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid = ((k.v >> 32) & 4294967295)::oid"
            " AND l.objid = (k.v & 4294967295)::oid"
            " AND a.state <> 'active' AND a.state_change < now() - make_interval(secs => %s)",
            (key, settings.lease_seconds),
        ).fetchone()
        if silent is None:
            return False
        log.warning(
            "the active relay (backend %s) has been silent for %.0fs: ending its session",
            silent[0],
            settings.lease_seconds,
        )
        connection.execute("SELECT pg_terminate_backend(%s, 5000)", (silent[0],))
        row = connection.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        return bool(row and row[0])

    def _heartbeat(self, connection: psycopg.Connection[Any]) -> None:
        """Keeps the lock's session visibly alive while this relay is active."""
        while self.is_active.is_set() and not self.stopping.wait(self._settings.heartbeat):
            try:
                connection.execute("SELECT 1")
            except Exception:  # the relay's loop finds out on its own connection use
                return

    def _publish_until_stopped(self, cursor: RelayCursor) -> None:
        """Follows the log from the durable cursor; see `_Pipeline`."""
        self.published = cursor.load()
        RELAY_PUBLISHED.set(self.published)
        follower = LogFollower(
            self._log,
            self.published,
            batch_size=self._settings.batch_size,
            poll_interval=self._settings.poll_interval,
            stopping=self.stopping,
        )
        pipeline = _Pipeline(self, cursor, follower)
        try:
            for batch in follower.batches(on_idle=pipeline.idle):
                pipeline.send(batch)
            pipeline.stopped()
        finally:
            pipeline.close()

    def _acknowledged(self, position: int) -> None:
        """Kafka acknowledged every event up to `position` (the cursor follows)."""
        self.published = position
        RELAY_PUBLISHED.set(position)
        self._on_published(position)

    def _producer(self) -> KafkaProducer:
        ensure_topics(self._settings)
        return KafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=int(_LINGER * 1000),
            max_in_flight_requests_per_connection=5,
            max_block_ms=int(self._settings.request_timeout * 1000),
            **self._settings.client_options(),
        )

    def _send(
        self, producer: KafkaProducer, batch: Sequence[LoggedEvent], watermark: int | None
    ) -> tuple[list[Any], set[tuple[str, int]]]:
        """Queues the batch's messages (their futures resolve on Kafka's acknowledgement),
        the last one to each partition carrying `watermark` if given; the partitions it
        reached. Each key goes to the partition kafka-python's default partitioner picks."""
        partitions: dict[str, list[int]] = {}
        messages = []
        for event in batch:
            key, value, headers = message_of(event)
            topic = self._settings.topic(event.stream_type)
            if topic not in partitions:
                partitions[topic] = sorted(producer.partitions_for(topic))
            numbers = partitions[topic]
            partition = numbers[(murmur2(key) & 0x7FFFFFFF) % len(numbers)]
            messages.append((topic, partition, key, value, headers))
        last = {(m[0], m[1]): i for i, m in enumerate(messages)}
        futures = []
        for i, (topic, partition, key, value, headers) in enumerate(messages):
            if watermark is not None and last[(topic, partition)] == i:
                headers = [
                    *headers,
                    (CARRIED_WATERMARK_HEADER, f"{watermark}:{partition}".encode()),
                ]
            headers = self._signed(topic, key, value, headers)
            futures.append(
                producer.send(topic, key=key, value=value, partition=partition, headers=headers)
            )
        return futures, set(last)

    def _send_watermarks(
        self, producer: KafkaProducer, position: int, covered: Collection[tuple[str, int]]
    ) -> list[Any]:
        """Tells every partition's readers but those `covered` (by an event that carries
        the watermark) that the log up to `position` has been sent."""
        sent = []
        for topic in map(self._settings.topic, STREAM_TYPES):
            for partition in sorted(producer.partitions_for(topic)):
                if (topic, partition) in covered:
                    continue
                # Its partition in the value: a signed watermark copied elsewhere fails.
                value = orjson.dumps({"watermark": position, "partition": partition})
                headers = self._signed(topic, None, value, [(WATERMARK_HEADER, b"1")])
                sent.append(producer.send(topic, value=value, partition=partition, headers=headers))
        return sent

    def _signed(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        if self._settings.feed_key is None:
            return headers
        mac = sign(self._settings.feed_key, topic, key, value, headers)
        return [*headers, (FEED_MAC_HEADER, mac)]


def discard_producer(producer: KafkaProducer, *, timeout: float) -> None:
    """Closes a producer, even one Kafka stopped answering (its close then fails to flush).
    Records it still holds may reach Kafka later: duplicates of what is sent again from the
    durable position, which consumers drop by stream version."""
    with contextlib.suppress(KafkaError):
        producer.close(timeout=timeout)


def ensure_topics(settings: RelaySettings) -> None:
    """Creates the stream-type topics with the fixed partition count, if missing."""
    admin = KafkaAdminClient(**settings.client_options())
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(settings.topic(t), num_partitions=settings.partitions, replication_factor=1)
            for t in STREAM_TYPES
            if settings.topic(t) not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
    finally:
        admin.close()


class _Pipeline:
    """The relay's batches in flight: a batch is sent (queued in the producer) and the next
    one read at once, without waiting for Kafka's acknowledgement of the first; the cursor
    is saved, in order, up to the last batch Kafka acknowledged in full. A send that fails
    (Kafka away) discards the producer and rewinds the follower to the cursor: everything
    after it is read and sent again (at-least-once, as after a crash; the idempotent
    producer keeps each partition's order, so no event overtakes an earlier one of its
    stream). At most `_MAX_IN_FLIGHT` batches wait for acknowledgement; one more waits.

    Watermarks follow the events they cover on the same producer, at most every
    `watermark_interval` (20 ms): with a batch when that long has passed (carried by its last
    event to each partition it reaches, a message of their own to the others), else at the
    log's end as soon as it has (the idle follower looks again every poll interval, also 20 ms), so
    an idle relay's head reaches every partition within about one interval. A watermark on
    every partition after each tiny batch cost the relay more CPU than the events did at a
    thousand commands a second (kafka-python makes a record batch per partition)."""

    _MAX_IN_FLIGHT = 8

    def __init__(self, relay: Relay, cursor: RelayCursor, follower: LogFollower) -> None:
        self._relay = relay
        self._settings = relay._settings
        self._cursor = cursor
        self._follower = follower
        self._producer: KafkaProducer | None = None
        self._in_flight: deque[tuple[int, list[Any]]] = deque()
        self._acked = follower.position  # the last position Kafka acknowledged
        self._saved, self._saved_at = follower.position, 0.0  # the cursor's
        self._sent = follower.position  # the last position queued in the producer
        self._sent_at = 0.0
        self._watermarked = follower.position
        self._watermarked_at = 0.0
        self._backoff = 0.1

    def send(self, batch: Sequence[LoggedEvent]) -> None:
        try:
            self._producer = self._producer or self._relay._producer()
            due = self._watermark_due()
            futures, covered = self._relay._send(
                self._producer, batch, batch[-1].id if due else None
            )
            self._sent, self._sent_at = batch[-1].id, time.monotonic()
            self._follower.advance_to(self._sent)
            if due:
                futures += self._watermarks(covered)
            self._in_flight.append((self._sent, futures))
            self._settle(block=len(self._in_flight) > self._MAX_IN_FLIGHT)
        except KafkaError as error:
            self._failed(error)

    def idle(self) -> None:
        """At the log's end: the head watermarked, acknowledgements taken in; the next read
        not before the producer's linger since the last send is over (what a read found
        sooner would wait in the producer anyway: reading again at each commit cost a query
        and a record batch per partition each)."""
        if (linger := _LINGER - (time.monotonic() - self._sent_at)) > 0:
            self._follower.pause(linger)
        try:
            if self._watermarked < self._sent and self._watermark_due():
                self._in_flight.append((self._sent, self._watermarks()))
            self._settle(block=False)
        except KafkaError as error:
            self._failed(error)

    def stopped(self) -> None:
        """A clean stop: the cursor saved up to what Kafka acknowledged."""
        self._saved_at = 0.0
        self._save()

    def close(self) -> None:
        if self._producer is not None:
            discard_producer(self._producer, timeout=5)

    def _watermark_due(self) -> bool:
        return time.monotonic() - self._watermarked_at >= self._settings.watermark_interval

    def _watermarks(self, covered: Collection[tuple[str, int]] = ()) -> list[Any]:
        """The watermark of what is sent to every partition not `covered` by an event of the
        last batch carrying it."""
        assert self._producer is not None
        self._watermarked, self._watermarked_at = self._sent, time.monotonic()
        return self._relay._send_watermarks(self._producer, self._sent, covered)

    def _settle(self, *, block: bool) -> None:
        """Saves the cursor up to the last batch acknowledged in full, in order; raises the
        first failed send. `block`: waits for the oldest batch."""
        acked = self._acked
        while self._in_flight:
            position, futures = self._in_flight[0]
            if block and acked == self._acked:
                for future in futures:
                    future.get(timeout=self._settings.request_timeout * 5)
            elif not all(future.is_done for future in futures):
                break
            for future in futures:
                if future.failed():
                    raise future.exception
            self._in_flight.popleft()
            acked = position
        if acked > self._acked:
            self._acked = acked
            self._backoff = 0.1
            self._relay._acknowledged(acked)
        self._save()

    def _save(self) -> None:
        """The cursor to the acknowledged position, at most every `cursor_interval` (a round
        trip per tiny batch held the next batch back; a crash re-sends a little more)."""
        now = time.monotonic()
        if self._acked > self._saved and now - self._saved_at >= self._settings.cursor_interval:
            self._cursor.save(self._acked)
            self._saved, self._saved_at = self._acked, now

    def _failed(self, error: KafkaError) -> None:
        log.warning("Kafka unavailable (%s); retrying in %.1fs", error, self._backoff)
        if self._producer is not None:
            discard_producer(self._producer, timeout=1)
            self._producer = None
        self._in_flight.clear()
        self._follower.rewind_to(self._acked)  # everything not acknowledged is sent again
        self._sent = self._watermarked = self._acked
        self._follower.pause(self._backoff)
        self._backoff = min(self._backoff * 2, self._settings.max_backoff)
