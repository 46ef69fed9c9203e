"""Auditors: a stream's history, an entity as it was, and a hash chain that names the first
event altered or removed behind the application's back (as a database superuser would)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.replay.audit import checkpoint, verify, verify_against
from tests.api.shopping import answer, create_product
from tests.conftest_services import POSTGRES_URL, require_env

Headers = Callable[[Role], dict[str, str]]


def tamper(wiring: Wiring, sql: str) -> None:
    """Runs `sql` on the log (`{log}`) with its append-only triggers out of the way."""
    if wiring.feed is None:  # distributed: the PostgreSQL superuser
        with psycopg.connect(require_env(POSTGRES_URL), autocommit=True) as connection:
            connection.execute("ALTER TABLE shop_events DISABLE TRIGGER USER")
            connection.execute(sql.replace("{log}", "shop_events"))
            connection.execute("ALTER TABLE shop_events ENABLE TRIGGER USER")
        return
    connection = sqlite3.connect(wiring.shop.env["SQLITE_DBNAME"])  # type: ignore[attr-defined]
    with connection:
        connection.execute("DROP TRIGGER stored_events_no_update")
        connection.execute("DROP TRIGGER stored_events_no_delete")
        connection.execute(sql.replace("{log}", "stored_events"))
    connection.close()


@pytest.fixture
def history(client: TestClient) -> list[dict[str, Any]]:
    """Three products, each changed twice: nine events."""
    made = []
    for n in range(3):
        product = create_product(client, sku=f"A-{n}")
        path = f"/v1/products/{product['id']}"
        answer(client.post(f"{path}/price", json={"price": "5.00", "currency": "EUR"}))
        made.append(answer(client.post(f"{path}/stock", json={"delta": 3, "reason": "count"})))
    return made


def test_an_intact_log_verifies_and_an_altered_event_is_named(
    wiring: Wiring, history: list[dict[str, Any]], client: TestClient, bearer: Headers
) -> None:
    assert verify(wiring.shop.recorder).intact
    forged = '{"actor": "mallory", "correlation_id": "x", "causation_id": null}'
    tamper(wiring, f"UPDATE {{log}} SET metadata = '{forged}' WHERE position = 5")
    verdict = verify(wiring.shop.recorder)
    assert verdict.altered is not None
    assert verdict.altered["position"] == 5
    assert "does not match its hash" in verdict.altered["problem"]
    answered = client.post("/v1/audit/verify", headers=bearer(Role.auditor)).json()
    assert answered["intact"] is False and answered["altered"]["position"] == 5


def test_the_api_compares_the_log_with_the_signed_checkpoints(
    wiring: Wiring, history: list[dict[str, Any]], client: TestClient, bearer: Headers
) -> None:
    """A tail removed below a checkpoint leaves a chain that is intact in itself: only the
    checkpoint file shows it, and `POST /v1/audit/verify` reads it as the CLI does."""
    assert wiring.checkpoints is not None
    _, written = checkpoint(wiring.shop.recorder, wiring.checkpoints)
    assert written is not None and written.position == 9
    auditor = bearer(Role.auditor)
    assert client.post("/v1/audit/verify", headers=auditor).json()["intact"] is True
    tamper(wiring, "DELETE FROM {log} WHERE position > 6")
    answered = client.post("/v1/audit/verify", headers=auditor).json()
    assert answered["intact"] is False, answered
    assert answered["altered"]["position"] == 7
    assert "removed from the tail" in answered["altered"]["problem"]
    assert answered == {
        "intact": False,
        "checked": 6,
        "last_position": 6,
        "altered": verify_against(wiring.shop.recorder, wiring.checkpoints).altered,
    }


def test_a_removed_event_is_named(wiring: Wiring, history: list[dict[str, Any]]) -> None:
    tamper(wiring, "DELETE FROM {log} WHERE position = 4")
    verdict = verify(wiring.shop.recorder)
    assert verdict.altered is not None and verdict.altered["position"] == 4
    assert "missing" in verdict.altered["problem"]


def test_history_and_state_as_of_a_version_and_a_moment(
    history: list[dict[str, Any]], client: TestClient, bearer: Headers
) -> None:
    auditor = bearer(Role.auditor)
    stream = history[0]["id"]
    events = client.get(f"/v1/audit/streams/{stream}/events", headers=auditor).json()["items"]
    assert [e["event_type"] for e in events] == [
        "ProductCreated",
        "ProductPriceChanged",
        "ProductStockAdjusted",
    ]
    assert all(e["metadata"]["actor"] and len(e["hash"]) == 64 for e in events)

    def state(**params: Any) -> dict[str, Any]:
        response = client.get(f"/v1/audit/streams/{stream}/state", params=params, headers=auditor)
        assert response.status_code == 200, response.text
        return response.json()

    first = state(version=1)
    assert (first["version"], first["state"]["price"], first["state"]["stock"]) == (1, "49.90", 10)
    then = state(as_of=events[1]["recorded_at"])
    assert (then["version"], then["state"]["price"], then["state"]["stock"]) == (2, "5.00", 10)
    assert state(version=3)["state"]["stock"] == 13


def test_audit_is_for_auditors_and_checks_its_parameters(
    history: list[dict[str, Any]], client: TestClient, bearer: Headers
) -> None:
    stream = history[0]["id"]
    assert client.get(f"/v1/audit/streams/{stream}/events").status_code == 403  # a client key
    auditor = bearer(Role.auditor)
    for params, status in (
        ({}, 422),
        ({"version": 1, "as_of": "2020-01-01T00:00:00Z"}, 422),
        ({"as_of": "2020-01-01T00:00:00"}, 422),
        ({"as_of": "2000-01-01T00:00:00Z"}, 404),
    ):
        response = client.get(f"/v1/audit/streams/{stream}/state", params=params, headers=auditor)
        assert response.status_code == status, (params, response.text)
    unknown = "00000000-0000-0000-0000-000000000001"
    assert client.get(f"/v1/audit/streams/{unknown}/events", headers=auditor).status_code == 404
