"""The history of an older release (schema v1 events, then v2) imports, rebuilds to exactly
the expected state through the query API, and aggregates loaded from it see upcast values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.replay.rebuild import Rebuild
from tests.api.shopping import answer
from tests.replay.conftest import LEGACY, LEGACY_EXPECTED, import_history

EXPECTED: dict[str, Any] = json.loads(LEGACY_EXPECTED.read_text())


@pytest.fixture
def legacy(projected: Wiring) -> int:
    """The legacy history imported and the read models rebuilt from it (swapped in while the
    live projector runs); the log's head."""
    wiring = projected
    assert import_history(wiring, LEGACY) == EXPECTED["events"]
    Rebuild(wiring.shop.recorder, wiring.queries.models).run()
    return wiring.shop.recorder.max_notification_id()


def shown(client: TestClient, path: str, head: int) -> dict[str, Any]:
    response = client.get(path, headers={"X-Min-Position": str(head)})
    assert response.status_code == 200, response.text
    return response.json()


def test_rebuilt_read_models_show_exactly_the_expected_state(
    client: TestClient, legacy: int
) -> None:
    for user_id, want in EXPECTED["users"].items():
        user = shown(client, f"/v1/users/{user_id}", legacy)
        got = {k: user[k] for k in ("email", "first_name", "last_name")}
        assert got | {"active": user["status"] == "active"} == want, user_id
    for product_id, want in EXPECTED["products"].items():
        product = shown(client, f"/v1/products/{product_id}", legacy)
        got = {k: product[k] for k in ("category", "currency", "name", "price", "sku", "stock")}
        assert got | {"active": product["status"] == "active"} == want, product_id
    for order_id, want in EXPECTED["orders"].items():
        order = shown(client, f"/v1/orders/{order_id}", legacy)
        assert {k: order[k] for k in want} == want, order_id


def test_aggregates_loaded_from_legacy_history_take_new_commands(
    client: TestClient, legacy: int
) -> None:
    product_id, product = next(
        (pid, p) for pid, p in EXPECTED["products"].items() if p["active"] and p["stock"] >= 2
    )
    user_id = next(uid for uid, u in EXPECTED["users"].items() if u["active"])
    lines = [{"product_id": product_id, "quantity": 2}]
    order = answer(client.post("/v1/orders", json={"user_id": user_id, "lines": lines}), 201)
    placed = shown(client, f"/v1/orders/{order['id']}", order["position"])
    # The price the product aggregate holds came from v1 cents, upcast to a decimal string.
    assert placed["lines"] == [{**lines[0], "unit_price": product["price"]}]
    assert shown(client, f"/v1/products/{product_id}", order["position"])["stock"] == (
        product["stock"] - 2
    )
    legacy_email = EXPECTED["users"][user_id]["email"]
    taken = client.post(
        "/v1/users", json={"email": legacy_email.upper(), "first_name": "A", "last_name": "B"}
    )
    assert taken.status_code == 409  # imported emails keep their uniqueness claims
