"""The command bus on each write store: in memory (milliseconds, no database), the embedded
SQLite store and the distributed PostgreSQL store — every handler test runs on all three."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eventkeep.bootstrap import Eventkeep, build
from eventkeep.commands.handlers import CommandBus
from tests.api.conftest import SHOP_TABLES, distributed_settings, embedded_settings
from tests.commands.memory import InMemoryWriteStore
from tests.commands.shopping import Writer
from tests.eventstore.stores import drop_postgres_tables

STORES = ("memory", "embedded", "distributed")


@pytest.fixture(params=STORES)
def writer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Writer]:
    if request.param == "memory":
        store = InMemoryWriteStore()
        bus = CommandBus(store, claim_secret=b"test-secret")
        yield Writer(bus, store, lambda: store.position, store.history)
        return
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "home")
    else:
        drop_postgres_tables(*SHOP_TABLES)
        settings = distributed_settings(tmp_path / "home")
    with build(settings, role="test") as system:
        recorder, events = system.shop.recorder, system.shop.repository.event_store
        yield Writer(
            system.bus,
            system.store,
            lambda: recorder.max_notification_id() or 0,
            lambda stream_id: list(events.get(stream_id)),
        )


@pytest.fixture(params=["embedded", "distributed"])
def two_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Eventkeep]]:
    """Two wirings over one store: two API processes."""
    if request.param == "embedded":
        settings = embedded_settings(tmp_path / "home")
    else:
        drop_postgres_tables(*SHOP_TABLES)
        settings = distributed_settings(tmp_path / "home")
    with build(settings, role="test") as first, build(settings, role="test") as second:
        yield [first, second]
