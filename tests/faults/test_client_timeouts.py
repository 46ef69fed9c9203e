"""Bounded waits on Redis and Kafka (issue 8 item 6): the clients the composition root builds
take their timeouts from the settings, and a frozen Redis slows a cached read by no more than
its timeout (the read then goes to the read models)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from eventkeep.bootstrap import build_cache, relay_settings
from eventkeep.projections.readmodel import encode
from eventkeep.settings import Settings
from tests.api.conftest import TEST_SECRET
from tests.conftest_services import REDIS_URL, require_env
from tests.faults.tcp_proxy import TcpProxy


def test_a_frozen_redis_costs_a_cached_read_at_most_its_timeout(tmp_path: Path) -> None:
    proxy = TcpProxy.to(require_env(REDIS_URL))
    try:
        settings = Settings(
            home=tmp_path,
            postgres_url=None,
            claim_secret=TEST_SECRET,
            redis_url=proxy.url(require_env(REDIS_URL)),
            redis_timeout=1.0,
        )
        cache = build_cache(settings)
        row = {"id": "r1", "version": 1}
        cache.fill("timeouts-test", "r1", 1, encode(row), 1)
        assert asyncio.run(cache.get_async("timeouts-test", "r1", 1)) == encode(row)
        proxy.freeze()
        started = time.monotonic()
        assert asyncio.run(cache.get_async("timeouts-test", "r1", 1)) is None  # a miss
        assert 0.8 <= time.monotonic() - started < 2.5  # the setting's timeout, no more
    finally:
        proxy.thaw()
        proxy.close()


def test_kafka_clients_take_their_request_timeout_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        postgres_url=None,
        claim_secret=TEST_SECRET,
        kafka_bootstrap="127.0.0.1:1",
        kafka_request_timeout=9,
    )
    assert relay_settings(settings).request_timeout == 9
