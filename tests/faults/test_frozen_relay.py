"""A relay whose PostgreSQL connection freezes (issue 8 item 6): the standby takes over within
30 s, everything is published, and the former leader cannot move the cursor back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eventkeep.eventstore.kafka_tls import KafkaTLS
from eventkeep.eventstore.postgres import PostgresApplicationRecorder
from eventkeep.eventstore.relay import Relay, RelayCursor, RelaySettings
from tests.eventstore.stores import postgres_log, postgres_params
from tests.eventstore.test_relay import (
    append,
    assert_complete_and_ordered,
    consume,
    start,
    wait_for,
)
from tests.faults.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services
TABLE = "frozen_relay_events"


@pytest.fixture
def log() -> Iterator[PostgresApplicationRecorder]:
    with postgres_log(TABLE) as recorder:
        yield recorder


def test_a_frozen_relay_loses_leadership_and_cannot_move_the_cursor_back(
    log: PostgresApplicationRecorder, kafka_bootstrap: str, postgres_url: str
) -> None:
    params = postgres_params()
    proxy = TcpProxy(params["host"], int(params["port"]))
    proxied = make_conninfo(**(conninfo_to_dict(postgres_url) | {"port": str(proxy.port)}))
    settings = RelaySettings(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        partitions=3,
        tls=KafkaTLS.from_environment(),
        lease_seconds=10,
    )
    frozen, standby = Relay(log, proxied, settings), Relay(log, postgres_url, settings)
    frozen_thread = start(frozen)
    wait_for(frozen.is_active.is_set)
    standby_thread = start(standby)
    try:
        append(log, streams=3, versions=2)
        wait_for(lambda: frozen.published == 6)
        proxy.freeze()
        frozen_at = time.monotonic()
        wait_for(standby.is_active.is_set, timeout=30)
        assert time.monotonic() - frozen_at < 30
        append(log, streams=3, versions=2)
        messages = consume(settings, 12)
        assert_complete_and_ordered(messages, 12)
        wait_for(lambda: standby.published == 12)
        proxy.thaw()  # the former leader finds its session ended
        wait_for(lambda: not frozen.is_active.is_set(), timeout=30)
        # Fenced: a save of an older position (what a former leader would do) changes nothing.
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            cursor = RelayCursor(connection, settings.topic_prefix)
            cursor.save(6)
            assert cursor.load() == 12
    finally:
        frozen.stop()
        standby.stop()
        proxy.thaw()
        proxy.close()
        frozen_thread.join(15)
        standby_thread.join(15)
