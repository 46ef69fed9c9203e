"""Health and readiness answer without a key, metrics only to an admin key; /docs and
/openapi.json describe the API."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from tests.api.shopping import USER


def test_health_and_readiness_need_no_key(anonymous: TestClient) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz").json()
    assert ready["status"] == "ready"
    assert {part["status"] for part in ready["parts"].values()} == {"up"}


def test_readiness_fails_when_the_store_does_not_answer(wiring: Wiring) -> None:
    class Unreachable:
        def max_notification_id(self) -> Any:
            raise OSError("connection refused")

    class NoStore:
        recorder = Unreachable()

        def close(self) -> None:
            pass

    app = create_app(replace(wiring, shop=NoStore()))  # type: ignore[arg-type]
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "STORE_UNAVAILABLE"


def test_metrics_need_an_admin_key(anonymous: TestClient, bearer: Any) -> None:
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", headers=bearer(Role.client)).status_code == 403
    assert anonymous.get("/metrics", headers=bearer(Role.analyst)).status_code == 403
    admin = anonymous.get("/metrics", headers=bearer(Role.admin))
    assert admin.status_code == 200
    assert "eventkeep_http_requests_total" in admin.text


def test_metrics_count_requests_by_route_and_commands_by_type(
    client: TestClient, anonymous: TestClient, bearer: Any
) -> None:
    user = client.post("/v1/users", json=USER).json()
    client.post("/v1/users", json=USER)  # taken
    client.post(f"/v1/users/{user['id']}/reactivate")  # already active
    anonymous.get("/v1/nowhere")

    text = anonymous.get("/metrics", headers=bearer(Role.admin)).text

    assert 'eventkeep_http_requests_total{method="POST",route="/v1/users",status="201"} 1.0' in text
    assert 'route="/v1/users/{user_id}/reactivate",status="409"' in text
    assert 'eventkeep_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'eventkeep_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text
    assert 'eventkeep_commands_total{command="RegisterUser",outcome="ok"} 1.0' in text
    assert 'eventkeep_commands_total{command="RegisterUser",outcome="EMAIL_TAKEN"} 1.0' in text


def test_openapi_lists_every_command_and_query_with_the_error_shape(
    anonymous: TestClient,
) -> None:
    assert anonymous.get("/docs").status_code == 200
    spec = anonymous.get("/openapi.json").json()
    endpoints = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if path.startswith("/v1/")
    }
    assert endpoints == {
        ("GET", "/v1/users"),
        ("GET", "/v1/users/{user_id}"),
        ("GET", "/v1/users/{user_id}/orders"),
        ("GET", "/v1/products"),
        ("GET", "/v1/products/{product_id}"),
        ("GET", "/v1/orders/{order_id}"),
        ("GET", "/v1/stats/sales"),
        ("GET", "/v1/projections"),
        ("GET", "/v1/audit/streams/{stream_id}/events"),
        ("GET", "/v1/audit/streams/{stream_id}/state"),
        ("POST", "/v1/audit/verify"),
        ("POST", "/v1/users"),
        ("POST", "/v1/users/{user_id}/email"),
        ("POST", "/v1/users/{user_id}/deactivate"),
        ("POST", "/v1/users/{user_id}/reactivate"),
        ("DELETE", "/v1/users/{user_id}/personal-data"),
        ("POST", "/v1/products"),
        ("POST", "/v1/products/{product_id}/details"),
        ("POST", "/v1/products/{product_id}/price"),
        ("POST", "/v1/products/{product_id}/stock"),
        ("POST", "/v1/products/{product_id}/discontinue"),
        ("POST", "/v1/orders"),
        ("POST", "/v1/orders/{order_id}/pay"),
        ("POST", "/v1/orders/{order_id}/ship"),
        ("POST", "/v1/orders/{order_id}/deliver"),
        ("POST", "/v1/orders/{order_id}/cancel"),
        ("POST", "/v1/graphql"),
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/refresh"),
        ("POST", "/v1/auth/logout"),
        ("POST", "/v1/users/{user_id}/password"),
        ("POST", "/v1/webhooks"),
        ("GET", "/v1/webhooks"),
        ("DELETE", "/v1/webhooks/{webhook_id}"),
        ("GET", "/v1/webhooks/{webhook_id}/deliveries"),
        ("POST", "/v1/webhooks/{webhook_id}/redeliver"),
    }
    register = spec["paths"]["/v1/users"]["post"]
    assert register["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorAnswer"
    }
    assert register["security"] == [{"HTTPBearer": []}]
