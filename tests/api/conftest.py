"""The API under test, built per mode so that every test runs against each store:
embedded (SQLite files in a temporary home) and distributed (the real PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring, wire
from eventkeep.api.keys import ApiKeyStore, Role
from eventkeep.bootstrap import build_projector, build_relay, projector_read_models
from eventkeep.projections.log_feed import fill_from
from eventkeep.projections.readmodels import ReadModels
from eventkeep.settings import Settings
from tests.conftest_services import KAFKA_BOOTSTRAP, POSTGRES_URL, require_env
from tests.eventstore.stores import drop_postgres_tables

# A deployment secret must hold 32 random bytes (eventkeep.deployment_secret).
TEST_SECRET = "test-secret-9f3Kq2xV7mZ1bR8tL4wN6yH0"
SHOP_TABLES = (
    "shop_events",
    "shop_events_claims",
    "shop_events_idempotency",
    # Dropped with the log: a new stream's key is made with its first event, and a key left
    # from an earlier test's stream of the same id (the fixtures' fixed ids) refuses it.
    "shop_events_data_keys",
    "api_keys",
    # The key store's other tables: customers' credentials (api/credentials.py) and webhooks.
    "customer_credentials",
    "customer_sessions",
    "customer_refresh_tokens",
    "login_failures",
    "webhooks",
    "webhook_deliveries",
)


def embedded_settings(home: Path) -> Settings:
    # postgres_url=None wins over an EVENTKEEP_POSTGRES_URL the shell may have set.
    return Settings(home=home, postgres_url=None, claim_secret=None)


def distributed_settings(home: Path) -> Settings:
    # The first events through a test's new Kafka topics take seconds to reach the read models
    # on a busy machine: queries wait up to 15 s for their X-Min-Position (tests of the 503
    # answer set a short wait themselves).
    settings = Settings(
        home=home,
        postgres_url=require_env(POSTGRES_URL),
        claim_secret=TEST_SECRET,
        min_position_wait=15,
    )
    # Tests rebuild and extend the read models through the wiring's own (one process doing
    # both, as in the embedded mode): its read side connects as the projector, which may. The
    # query role's refusals are shown by tests/eventstore/test_roles.py.
    if settings.postgres_projector_url is not None:
        settings = settings.model_copy(
            update={"postgres_query_url": settings.postgres_projector_url}
        )
    return settings


def embedded_wiring(home: Path, **overrides: Any) -> Wiring:
    """The embedded wiring, `overrides` put over the tests' own settings."""
    return wire(embedded_settings(home).model_copy(update=overrides))


def distributed_wiring(home: Path, settings: Settings | None = None, **overrides: Any) -> Wiring:
    """A wiring on emptied tables; `settings` (e.g. through a fault test's proxies) or
    `distributed_settings(home)`, `overrides` put over them."""
    drop_postgres_tables(*SHOP_TABLES)
    stale = ReadModels.open(postgres_url=require_env(POSTGRES_URL))
    stale.drop()
    stale.close()
    return wire((settings or distributed_settings(home)).model_copy(update=overrides))


MODES: dict[str, Callable[..., Wiring]] = {
    "embedded": embedded_wiring,
    "distributed": distributed_wiring,
}


@pytest.fixture(params=sorted(MODES))
def wiring(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Wiring]:
    built = MODES[request.param](tmp_path / "home")
    yield built
    built.close()


@pytest.fixture
def feed_settings(wiring: Wiring, tmp_path: Path) -> Settings | None:
    """The distributed mode's Kafka settings for this test's topics (None: embedded)."""
    if wiring.feed is not None:
        return None
    unique = uuid.uuid4().hex[:10]
    return distributed_settings(tmp_path / "home").model_copy(
        update={
            "kafka_bootstrap": require_env(KAFKA_BOOTSTRAP),
            "topic_prefix": f"t{unique}",
            "topic_partitions": 2,
            "projector_group": f"g{unique}",
        }
    )


@pytest.fixture
def projected(wiring: Wiring, feed_settings: Settings | None) -> Iterator[Wiring]:
    """The wiring with its events reaching the read models: embedded, its in-process feed;
    distributed, a relay and a projector (threads here) through Kafka topics of this test."""
    if feed_settings is None:
        yield wiring
        return
    settings = feed_settings
    # The projector writes on its own role's connection (the query side's only reads).
    projector_models = projector_read_models(settings)
    # As the composition root builds a projector: gaps and a lost feed filled from the store.
    projector_models.fill = fill_from(wiring.shop.recorder)
    workers = [
        build_relay(settings, wiring.shop),
        build_projector(settings, projector_models, store=wiring.shop.recorder),
    ]
    threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    yield wiring
    for worker in workers:
        worker.stop()
    for thread in threads:
        thread.join(15)
    projector_models.close()


@pytest.fixture
def app(wiring: Wiring) -> FastAPI:
    return create_app(wiring)


@pytest.fixture
def keys(wiring: Wiring) -> ApiKeyStore:
    return wiring.keys


@pytest.fixture
def bearer(keys: ApiKeyStore) -> Callable[[Role], dict[str, str]]:
    """The Authorization header of a new key with the given role."""

    def make(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys.create(role, f'test {role}').secret_key}"}

    return make


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(app: FastAPI, bearer: Callable[[Role], dict[str, str]]) -> Iterator[TestClient]:
    """Sends every request with a client key, as an API client would."""
    with TestClient(app, headers=bearer(Role.client)) as client:
        yield client
