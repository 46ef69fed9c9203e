"""PostgreSQL out of reach for the write side: commands answer 503 STORE_UNAVAILABLE with
Retry-After at once (the circuit breaker refuses them without trying the store), queries keep
answering from the read side, `/readyz` names the part that is down, and once PostgreSQL
answers again the commands go through and nothing acknowledged was lost.

The real PostgreSQL is never stopped: the event store is reached through a small TCP proxy the
test starts, and the test cuts the proxy (its connections closed, its port refusing). The read
side connects directly, as when the read models live in another database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import CommandHandle, Wiring
from eventkeep.api.keys import Role
from eventkeep.bootstrap import build
from eventkeep.eventstore import pools
from eventkeep.projections.log_feed import LogFeed
from eventkeep.projections.queries import Queries
from eventkeep.settings import Settings
from tests.api.conftest import SHOP_TABLES, distributed_settings
from tests.api.shopping import PRODUCT, USER
from tests.api.test_lean_commands import DependencyCount
from tests.conftest_services import POSTGRES_URL, require_env
from tests.eventstore.stores import drop_postgres_tables
from tests.faults.tcp_proxy import TcpProxy


class Attempts:
    """Counts the commands that reached the write store (past the circuit breaker)."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.handle_async: Any = None
        self.count = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.handle(*args, **kwargs)

    async def awaitable(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return await self.handle_async(*args, **kwargs)


# A refusal must not wait out the 5 s PostgreSQL connect or pool timeout; the margin below it
# is for a loaded two-core machine (a CI run once measured 1.02 s for a refusal).
NO_WAIT = 3.0


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    info = conninfo_to_dict(require_env(POSTGRES_URL))
    proxied = TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    yield proxied
    proxied.close()


@pytest.fixture
def attempts() -> Attempts:
    return Attempts()


@pytest.fixture(params=["worker thread", "event loop"])
def outage_wiring(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: TcpProxy, attempts: Attempts
) -> Iterator[Wiring]:
    """Commands through a plain handle (run in a worker thread) or, as `wire` builds them,
    awaited on the event loop."""
    drop_postgres_tables(*SHOP_TABLES)
    direct = distributed_settings(tmp_path / "home")
    info = conninfo_to_dict(require_env(POSTGRES_URL)) | {"port": proxy.port}
    through_proxy = direct.model_copy(
        update={
            "postgres_url": SecretStr(make_conninfo(**{k: str(v) for k, v in info.items()})),
            "store_retry_seconds": 3.0,
        }
    )
    reads = build(direct, role="serve")
    reads.read_models.drop()
    reads.read_models.migrate()
    writes = build(through_proxy, role="serve")
    breaker = writes.store_breaker()
    assert breaker is not None
    # The read models follow the log directly (the embedded mode's feed over PostgreSQL): the
    # read side needs PostgreSQL only, not Kafka, in this test.
    feed = LogFeed(reads.recorder, reads.read_models, reads.cache)
    feed.start()
    attempts.handle, attempts.handle_async = writes.bus.handle, writes.bus.handle_async
    handle: Any = breaker.guard(attempts)
    if request.param == "event loop":
        handle = CommandHandle(handle, breaker.guard_async(attempts.awaitable))
    wiring = Wiring(
        shop=writes.shop,
        handle=handle,
        keys=reads.keys,
        queries=Queries(reads.read_models, reads.cache, feed),
        min_position_wait=10.0,
        breaker=breaker,
    )
    yield wiring
    feed.stop()
    breaker.close()
    writes.close()
    reads.close()


def _timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def test_postgres_unreachable_commands_fail_fast_and_queries_still_answer(
    outage_wiring: Wiring, proxy: TcpProxy, attempts: Attempts
) -> None:
    key = outage_wiring.keys.create(Role.client, "outage").secret_key
    headers = {"Authorization": f"Bearer {key}"}
    app = create_app(outage_wiring)
    with TestClient(app, headers=headers, raise_server_exceptions=False) as client:
        user = client.post("/v1/users", json=USER)
        assert user.status_code == 201, user.text
        user_id, position = user.json()["id"], user.json()["position"]
        seen = client.get(f"/v1/users/{user_id}", headers={"X-Min-Position": str(position)})
        assert seen.status_code == 200, seen.text

        proxy.refusing = True  # PostgreSQL out of reach: connections cut, new ones refused
        proxy.cut_all()
        first, first_took = _timed(
            lambda: client.post("/v1/users", json={**USER, "email": "first@example.com"})
        )
        assert first.status_code == 503, first.text
        # The breaker is open now (tripped by that command or by its watcher): every
        # command is refused at once, none is attempted.
        attempted = attempts.count
        for number in range(5):
            body = {**USER, "email": f"during{number}@example.com"}
            refused, took = _timed(lambda body=body: client.post("/v1/users", json=body))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "STORE_UNAVAILABLE"
            assert refused.headers["Retry-After"] == "1"
            assert took < NO_WAIT, f"refusal {number} took {took:.3f}s"
        assert attempts.count == attempted
        # Queries answer from the read side.
        still = client.get(f"/v1/users/{user_id}")
        assert still.status_code == 200, still.text
        assert still.json()["email"] == USER["email"]
        # A scrape does not wait for PostgreSQL either: it answers without the log's head.
        admin = {"Authorization": f"Bearer {outage_wiring.keys.create(Role.admin, 'a').secret_key}"}
        scraped, scrape_took = _timed(lambda: client.get("/metrics", headers=admin))
        assert scraped.status_code == 200
        assert "eventkeep_store_circuit_open 1.0" in scraped.text
        assert scrape_took < NO_WAIT, f"scrape took {scrape_took:.3f}s"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        parts = ready.json()["error"]["details"]["parts"]
        assert parts["event_store"] == {"dependency": "postgres", "status": "down"}
        assert parts["read_models"] == {"dependency": "postgres", "status": "up"}

        proxy.refusing = False
        deadline = time.monotonic() + 10
        while True:
            after = client.post("/v1/users", json={**USER, "email": "after@example.com"})
            if after.status_code == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert after.status_code == 201, after.text
        assert client.get("/readyz").json()["status"] == "ready"
        # Nothing acknowledged was lost, and nothing refused was written.
        commands = {
            event.metadata.get("correlation_id")
            for event in outage_wiring.shop.recorder.select_notifications(start=1, limit=100)
        }
        assert len(commands) == 2  # the user before the cut and the one after it
    print(f"first command after the cut answered 503 in {first_took:.3f}s")


def test_a_command_on_the_short_path_answers_the_outage_as_its_route(
    outage_wiring: Wiring, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot commands' short path (api/lean_commands.py) answers the store's outage with the
    app's own handler: the same 503, headers and body as the full route."""
    key = outage_wiring.keys.create(Role.client, "outage").secret_key
    headers = {"Authorization": f"Bearer {key}", "X-Correlation-ID": "outage"}
    solved = DependencyCount(monkeypatch)
    with (
        TestClient(create_app(outage_wiring), headers=headers) as lean,
        TestClient(create_app(outage_wiring, lean_commands=False), headers=headers) as full,
    ):
        product = lean.post("/v1/products", json=PRODUCT)
        assert product.status_code == 201, product.text
        stock = f"/v1/products/{product.json()['id']}/stock"
        proxy.refusing = True
        proxy.cut_all()
        tripped = full.post("/v1/users", json=USER)  # the breaker opens on this one (or before)
        assert tripped.status_code == 503, tripped.text
        for path, body in (("/v1/users", USER), (stock, {"delta": -1, "reason": "sold"})):
            before = solved.calls
            short = lean.post(path, json=body)
            assert solved.calls == before  # answered on the short path
            routed = full.post(path, json=body)
            assert short.status_code == 503, short.text
            assert short.json()["error"]["code"] == "STORE_UNAVAILABLE"
            assert (short.status_code, short.headers.raw, short.content) == (
                routed.status_code,
                routed.headers.raw,
                routed.content,
            )
        proxy.refusing = False


def test_a_command_right_after_every_connection_was_cut_answers(
    outage_wiring: Wiring, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart ends every pooled connection at once. The API's event-store pool checks a
    connection only when it was not checked in the last second (eventstore/pools.py
    `check_unless_recent`; here never again, the worst case: a cut right after a check), so
    it lends a dead one as it is: the store's read runs once more on another connection, the
    pool's idle ones checked first, and the command answers — never a 500, nor a 503 from a
    breaker tripped by a connection the restart had already ended."""
    monkeypatch.setattr(pools, "RECENTLY_CHECKED", 3600.0)
    pool_size = Settings().pool_size  # and as many again beyond it, by demand
    key = outage_wiring.keys.create(Role.client, "cut").secret_key
    with TestClient(
        create_app(outage_wiring), headers={"Authorization": f"Bearer {key}"}
    ) as client:
        product = client.post("/v1/products", json=PRODUCT)
        assert product.status_code == 201, product.text
        stock = f"/v1/products/{product.json()['id']}/stock"
        # More reads than the pool holds connections (it lends them in turn): each is checked
        # once, then never again.
        for attempt in range(2 * (pool_size + 1)):
            # An Idempotency-Key: the command first reads the store (is it a retry?).
            keyed = {"Idempotency-Key": f"before-{attempt}"}
            back = client.post(stock, json={"delta": 1, "reason": "returned"}, headers=keyed)
            assert back.status_code == 200, back.text
        assert back.json()["version"] == 2 * (pool_size + 1) + 1
        # Cut right after the breaker's watcher probed (a fresh connection each second): a
        # probe cut in its handshake would open the breaker, as it should in a real outage.
        breaker = outage_wiring.breaker
        assert breaker is not None
        probed, probe = threading.Event(), breaker._probe
        monkeypatch.setattr(breaker, "_probe", lambda: (probe(), probed.set()))
        assert probed.wait(10)
        proxy.cut_all()

        after = client.post(
            stock, json={"delta": 1, "reason": "returned"}, headers={"Idempotency-Key": "after"}
        )
        assert after.status_code == 200, after.text
        user = client.post("/v1/users", json=USER, headers={"Idempotency-Key": "user"})
        assert user.status_code == 201, user.text
        assert after.json()["version"] == 2 * (pool_size + 1) + 2
