"""Every Prometheus metric of eventkeep's processes, defined once, here (docs/operations.md lists
them with the alerts that read them).

The engine's metrics (group commit, cache, relay, projectors, quarantine, overload) live in
prometheus_client's default registry: one per process. The HTTP layer keeps its request
metrics per app (`eventkeep.api.metrics`), so that apps built side by side in tests count
apart. How each process exposes them:

- `eventkeep serve`: `GET /metrics` (admin key). With several workers, `serve` points
  `PROMETHEUS_MULTIPROC_DIR` at a fresh private folder before the workers start; every worker
  then writes its values there and the route answers all of them aggregated
  (`multiprocess_registry`). Gauges say how they aggregate (`multiprocess_mode`).
- `eventkeep relay` and `eventkeep project`: their own `/metrics` on `EVENTKEEP_METRICS_PORT`
  (`serve_metrics`), bound to `EVENTKEEP_METRICS_HOST` (127.0.0.1 by default).

Values measured at scrape time (the log's head, each read model's position and lag) come from
`LagCollector`, registered by the process that can read them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# --- the write side ---------------------------------------------------------------------------

GROUP_COMMIT_BATCH = Histogram(
    "eventkeep_group_commit_batch_appends",
    "Appends (commands) committed together in one group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
GROUP_COMMIT_WAIT = Histogram(
    "eventkeep_group_commit_wait_seconds",
    "Time an append waited in the group committer's queue before its batch began.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
AGGREGATE_LOAD_STREAMS = Histogram(
    "eventkeep_aggregate_load_streams",
    "Aggregates not in the write path's memory read together in one statement (the loads"
    " commands awaited at the same moment share one).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
GROUP_COMMIT_REFUSED = Counter(
    "eventkeep_group_commit_refused",
    "Appends refused because the group committer's queue stayed full (answered 503).",
)
GROUP_COMMIT_PATH = Counter(
    "eventkeep_group_commit_batches",
    "Group-commit batches by path: one_trip (lock, checks and writes in one round trip, the"
    " log still where this process left it), moved (one trip refused: another process"
    " appended or a check failed; then the locked path) and locked (reads under the lock,"
    " then writes: two round trips).",
    ["path"],
)
GROUP_COMMIT_VERIFIED = Counter(
    "eventkeep_group_commit_verified",
    "Batches whose connection failed while committing, by what asking the store found:"
    " committed, not_written or unknown (answered 503 COMMIT_OUTCOME_UNKNOWN).",
    ["outcome"],
)
STORE_CIRCUIT_OPEN = Gauge(
    "eventkeep_store_circuit_open",
    "1 while the write store's circuit breaker fails commands fast (PostgreSQL unreachable).",
    multiprocess_mode="livemax",
)
STORE_CIRCUIT_TRIPS = Counter(
    "eventkeep_store_circuit_trips",
    "Times the write store's circuit breaker opened after a connection failure.",
)

# --- the HTTP door ----------------------------------------------------------------------------

RATE_LIMITED = Counter(
    "eventkeep_rate_limited",
    "Requests refused with 429 because their API key went past its rate limit.",
)
ADMISSION_REFUSED = Counter(
    "eventkeep_admission_refused",
    "Requests refused with 503 because the process already had its most requests in flight.",
)
IN_FLIGHT = Gauge(
    "eventkeep_http_in_flight",
    "Requests being answered by the process now.",
    multiprocess_mode="livesum",
)

# --- the read side ----------------------------------------------------------------------------

CACHE_LOOKUPS = Counter(
    "eventkeep_cache_lookups",
    "By-id query cache lookups: result hit or miss (hit ratio = hits / all).",
    ["result"],
)
QUARANTINED = Counter(
    "eventkeep_quarantined_events",
    "Events a projection set aside (quarantine) instead of applying them.",
    ["projection"],
)
QUARANTINE_SIZE = Gauge(
    "eventkeep_quarantine_size",
    "Events waiting in a projection's quarantine now (`eventkeep replay quarantine list`).",
    ["projection"],
    multiprocess_mode="livemostrecent",
)
FEED_REJECTED = Counter(
    "eventkeep_feed_rejected",
    "Kafka messages a projector refused: their MAC did not verify (forged or altered).",
    ["topic"],
)
GAPS = Counter(
    "eventkeep_projection_gaps",
    "Gaps in a stream's versions a projection met (and filled from the store).",
    ["projection"],
)
PROJECTED_EVENTS = Counter(
    "eventkeep_projected_events",
    "Events applied to the read models by this process.",
)
PROJECTION_LAG_SECONDS = Gauge(
    "eventkeep_projection_lag_seconds",
    "Age of the newest event a projector applied, when it applied it (0 when idle: caught up).",
    ["projection"],
    multiprocess_mode="livemostrecent",
)
KAFKA_CONSUMER_LAG = Gauge(
    "eventkeep_kafka_consumer_lag",
    "Messages of a partition not yet consumed by this projector (end offset - position).",
    ["topic", "partition"],
    multiprocess_mode="livemostrecent",
)

REPLICA_QUERIES = Counter(
    "eventkeep_replica_queries",
    "Queries of an API process with a read replica, by the database chosen to answer them "
    "(replica or primary).",
    ["database"],
)
REPLICA_FALLBACKS = Counter(
    "eventkeep_replica_fallbacks",
    "Queries sent to the primary instead of the read replica, by reason: behind (the replica "
    "had not applied their X-Min-Position in time), unreachable (it could not be read) or "
    "conflict (the standby cancelled the statement to replay the primary's WAL).",
    ["reason"],
)


def observe_applied(names: Iterable[str], envelopes: Sequence[Mapping[str, Any]]) -> None:
    """Counts events a projector applied; each read model's lag in seconds becomes the age of
    the newest of them (their `recorded_at`, RFC 3339)."""
    if not envelopes:
        return
    PROJECTED_EVENTS.inc(len(envelopes))
    newest = max(str(envelope["recorded_at"]) for envelope in envelopes)
    age = max(0.0, time.time() - datetime.fromisoformat(newest).timestamp())
    for name in names:
        PROJECTION_LAG_SECONDS.labels(name).set(age)


def observe_idle(names: Iterable[str]) -> None:
    """A projector found nothing more to apply: its read models lag by no time."""
    for name in names:
        PROJECTION_LAG_SECONDS.labels(name).set(0)


# --- the relay --------------------------------------------------------------------------------

RELAY_ACTIVE = Gauge(
    "eventkeep_relay_active",
    "1 while this relay holds the lock and publishes (the others stand by at 0).",
    multiprocess_mode="livemax",
)
RELAY_PUBLISHED = Gauge(
    "eventkeep_relay_published_position",
    "Position of the last event the relay saw Kafka acknowledge.",
    multiprocess_mode="livemax",
)

# --- audit ------------------------------------------------------------------------------------

AUDIT_VERIFY_OK = Gauge(
    "eventkeep_audit_verify_ok",
    "1 when the last hash-chain verification passed, 0 when it failed.",
    multiprocess_mode="livemostrecent",
)
AUDIT_VERIFY_TIME = Gauge(
    "eventkeep_audit_verify_timestamp_seconds",
    "When the last hash-chain verification finished (Unix time).",
    multiprocess_mode="livemax",
)


CHAIN_CHECKPOINT_POSITION = Gauge(
    "eventkeep_chain_checkpoint_position",
    "Log position the newest signed checkpoint covers (as this process wrote or read it).",
    multiprocess_mode="livemax",
)
CHAIN_CHECKPOINT_TIME = Gauge(
    "eventkeep_chain_checkpoint_timestamp_seconds",
    "When the newest signed checkpoint was signed (Unix time).",
    multiprocess_mode="livemax",
)


def record_checkpoint(position: int, signed_at: float) -> None:
    CHAIN_CHECKPOINT_POSITION.set(position)
    CHAIN_CHECKPOINT_TIME.set(signed_at)


def record_verify(ok: bool, textfile: Path | None = None) -> None:
    """Records a verification's outcome; with `textfile`, also writes both gauges there in the
    text format (for node_exporter's textfile collector: `eventkeep audit verify` is a run,
    not a process Prometheus can scrape)."""
    AUDIT_VERIFY_OK.set(1 if ok else 0)
    AUDIT_VERIFY_TIME.set(time.time())
    if textfile is None:
        return
    from prometheus_client import write_to_textfile

    registry = CollectorRegistry()
    Gauge(AUDIT_VERIFY_OK._name, AUDIT_VERIFY_OK._documentation, registry=registry).set(
        1 if ok else 0
    )
    Gauge(AUDIT_VERIFY_TIME._name, AUDIT_VERIFY_TIME._documentation, registry=registry).set(
        time.time()
    )
    write_to_textfile(str(textfile), registry)


# --- measured at scrape time ------------------------------------------------------------------


class LagCollector(Collector):
    """The log's head, and each read model's position and lag in events, read when scraped
    (`head` and `positions` are callables of the process; a failing read yields nothing)."""

    def __init__(
        self,
        head: Callable[[], int | None],
        positions: Callable[[], Mapping[str, int]] | None = None,
        published: Callable[[], int | None] | None = None,
    ) -> None:
        self._head = head
        self._positions = positions
        self._published = published

    def collect(self) -> Iterator[Metric]:
        try:
            head = self._head() or 0
        except Exception as error:  # the store is down: /readyz says so
            log.debug("log head unreadable: %s", error)
            return
        yield GaugeMetricFamily(
            "eventkeep_log_head_position", "Position of the last event in the global log.", head
        )
        if self._positions is not None:
            try:
                positions = dict(self._positions())
            except Exception as error:
                log.debug("read-model positions unreadable: %s", error)
                positions = {}
            position = GaugeMetricFamily(
                "eventkeep_projection_position",
                "Every event up to this position is applied to the read model.",
                labels=["projection"],
            )
            lag = GaugeMetricFamily(
                "eventkeep_projection_lag_events",
                "Events of the log not yet applied to the read model (head - position).",
                labels=["projection"],
            )
            for name, at in sorted(positions.items()):
                position.add_metric([name], at)
                lag.add_metric([name], max(0, head - at))
            yield position
            yield lag
        if self._published is not None:
            published = self._published()
            if published is not None:
                yield GaugeMetricFamily(
                    "eventkeep_relay_lag_events",
                    "Events of the log the relay has not yet published (head - published).",
                    max(0, head - published),
                )


class ReplicaLagCollector(Collector):
    """The read replica's lag behind the primary in events, per read model, and whether it is
    read (`lag` and `up` are callables of the API process, answered from memory)."""

    def __init__(self, lag: Callable[[], Mapping[str, int]], up: Callable[[], bool]) -> None:
        self._lag = lag
        self._up = up

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "eventkeep_replica_lag_events",
            "Events the read replica's copy of a read model is behind the primary's.",
            labels=["projection"],
        )
        for name, behind in sorted(self._lag().items()):
            lag.add_metric([name], behind)
        yield lag
        yield GaugeMetricFamily(
            "eventkeep_replica_up",
            "1 while the read replica is read (its progress read lately, no query failed on it).",
            1 if self._up() else 0,
        )


# --- exposing them ----------------------------------------------------------------------------


def prepare_multiprocess_dir(folder: Path) -> Path:
    """An empty folder, 0700, for the workers' values (a former run's files removed: their
    counters would otherwise be added to this run's)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700, parents=True)
    folder.chmod(0o700)
    return folder


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_VARIABLE))


def scrape_registry(
    own: Iterable[CollectorRegistry | Collector] = (), live: Iterable[Collector] = ()
) -> CollectorRegistry:
    """What one scrape answers: every worker's values aggregated in multiprocess mode (the
    `own` registries write there too), else this process's default registry and `own`; plus
    the `live` collectors, measured now."""
    registry = CollectorRegistry()
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)
    else:
        for source in (REGISTRY, *own):
            registry.register(_Forward(source))
    for collector in live:
        registry.register(collector)
    return registry


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry | Collector) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


def serve_metrics(port: int | None, host: str, live: Iterable[Collector] = ()) -> None:
    """`/metrics` of a relay or projector process on `host:port` (nothing when port is None)."""
    if port is None:
        return
    for collector in live:
        with contextlib.suppress(ValueError):  # registered already (a test's second worker)
            REGISTRY.register(collector)
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%s/metrics", host, port)
