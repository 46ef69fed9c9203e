"""Every error answers `{"error": {"code", "message", "details"}}` with its status; bad input
never reaches a 500, and an unexpected failure leaks nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import OperationalError as StoreOperationalError
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from tests.api.shopping import PRODUCT, USER, create_product, place_order, register
from tests.conftest_services import POSTGRES_URL, require_env


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_validation_lists_every_bad_field(client: TestClient) -> None:
    body = {"email": "not-an-email", "first_name": "", "last_name": "x", "admin": True}
    details = error(client.post("/v1/users", json=body), 422, "VALIDATION_FAILED")["details"]
    assert {field["field"] for field in details["fields"]} == {
        "body.email",
        "body.first_name",
        "body.admin",
    }


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/products", {"price": "9.5"}, "body.price"),
        ("/v1/products", {"price": "-1.00"}, "body.price"),
        ("/v1/products", {"currency": "euro"}, "body.currency"),
        ("/v1/products", {"stock": -1}, "body.stock"),
        ("/v1/products", {"name": "x" * 201}, "body.name"),
    ],
)
def test_product_fields_are_bounded(client: TestClient, path: str, body: Any, field: str) -> None:
    details = error(client.post(path, json={**PRODUCT, **body}), 422, "VALIDATION_FAILED")
    assert [f["field"] for f in details["details"]["fields"]] == [field]


def test_order_quantity_must_be_at_least_one(client: TestClient) -> None:
    response = place_order(client, str(uuid4()), str(uuid4()), quantity=0)
    details = error(response, 422, "VALIDATION_FAILED")["details"]
    assert [f["field"] for f in details["fields"]] == ["body.lines.0.quantity"]


def test_an_order_needs_lines(client: TestClient) -> None:
    response = client.post("/v1/orders", json={"user_id": str(uuid4()), "lines": []})
    error(response, 422, "VALIDATION_FAILED")


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/users", content=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    error(response, 400, "MALFORMED_REQUEST")


def test_a_body_not_sent_as_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/users", content=b"email=a@b.co")
    error(response, 400, "MALFORMED_REQUEST")


def test_bad_uuid_in_the_path_is_422(client: TestClient) -> None:
    details = error(client.post("/v1/users/42/reactivate"), 422, "VALIDATION_FAILED")["details"]
    assert [f["field"] for f in details["fields"]] == ["path.user_id"]


def test_unknown_route_is_404_and_wrong_method_405(client: TestClient) -> None:
    error(client.get("/v1/nowhere"), 404, "NOT_FOUND")
    error(client.put("/v1/users"), 405, "METHOD_NOT_ALLOWED")


def test_unknown_stream_is_404(client: TestClient) -> None:
    error(client.post(f"/v1/users/{uuid4()}/reactivate"), 404, "NOT_FOUND")
    error(client.post(f"/v1/orders/{uuid4()}/deliver"), 404, "NOT_FOUND")


def test_taken_email_is_409(client: TestClient) -> None:
    register(client)
    error(client.post("/v1/users", json=USER), 409, "EMAIL_TAKEN")


def test_wrong_state_transition_is_409(client: TestClient) -> None:
    user = register(client)
    product = create_product(client)
    order = place_order(client, user["id"], product["id"]).json()
    error(client.post(f"/v1/orders/{order['id']}/deliver"), 409, "INVALID_STATE_TRANSITION")


def test_insufficient_stock_is_409(client: TestClient) -> None:
    product = create_product(client, stock=1)
    response = client.post(
        f"/v1/products/{product['id']}/stock", json={"delta": -2, "reason": "count"}
    )
    error(response, 409, "STOCK_INSUFFICIENT")


def test_other_domain_rules_are_422(client: TestClient) -> None:
    user = register(client)
    product = create_product(client, price="5.00")
    order = place_order(client, user["id"], product["id"], quantity=1).json()
    response = client.post(
        f"/v1/orders/{order['id']}/pay", json={"amount": "4.00", "payment_ref": "p"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] not in {"VALIDATION_FAILED", "INTERNAL"}


def failing_app(wiring: Wiring, failure: Exception) -> TestClient:
    def handle(*_: object) -> Any:
        raise failure

    broken = replace(wiring, handle=handle)
    return TestClient(create_app(broken), raise_server_exceptions=False)


def test_unexpected_error_is_a_bare_500(
    wiring: Wiring, bearer: Callable[..., dict[str, str]]
) -> None:
    client = failing_app(wiring, RuntimeError("secret table t_users_x is corrupt"))
    response = client.post(
        "/v1/users", json=USER, headers={**bearer(Role.client), "X-Correlation-ID": "c-1"}
    )
    details = error(response, 500, "INTERNAL")
    assert "t_users_x" not in response.text
    assert details["details"] == {}
    assert response.headers["X-Correlation-ID"] == "c-1"


@pytest.mark.parametrize(
    "failure",
    [
        psycopg.OperationalError("connection refused to 10.0.0.5"),
        PoolTimeout("couldn't get a connection after 5.00 sec (10.0.0.5)"),
        StoreOperationalError("connection refused to 10.0.0.5"),
    ],
)
def test_unreachable_postgres_is_503(
    wiring: Wiring, bearer: Callable[..., Any], failure: Exception
) -> None:
    client = failing_app(wiring, failure)
    response = client.post("/v1/users", json=USER, headers=bearer(Role.client))
    error(response, 503, "STORE_UNAVAILABLE")
    assert "10.0.0.5" not in response.text


def test_a_commit_outlasting_the_wait_is_503_commit_outcome_unknown(
    wiring: Wiring, client: TestClient
) -> None:
    """The writer stops waiting while its append is being committed (the log's write lock is
    held elsewhere): it is told the outcome is unknown, and the append is stored later."""
    import sqlite3
    import time

    recorder: Any = wiring.shop.recorder
    recorder.set_commit_timeouts(result_wait=1)
    head = recorder.max_notification_id() or 0
    if wiring.feed is not None:  # embedded: the SQLite file's write lock
        holder: Any = sqlite3.connect(recorder.sql._datastore.pool.db_name, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        release = holder.rollback
    else:  # distributed: the advisory lock every append takes
        holder = psycopg.connect(require_env(POSTGRES_URL), autocommit=True)
        key = f"eventkeep append {recorder._events}"
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        release = lambda: holder.execute("SELECT pg_advisory_unlock_all()")  # noqa: E731
    try:
        response = client.post("/v1/products", json=PRODUCT)
        error(response, 503, "COMMIT_OUTCOME_UNKNOWN")
        assert response.headers["Retry-After"] == "1"
    finally:
        release()
    deadline = time.monotonic() + 10
    while (recorder.max_notification_id() or 0) <= head and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (recorder.max_notification_id() or 0) > head  # it was committed after all
    holder.close()
