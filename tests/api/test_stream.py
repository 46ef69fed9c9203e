"""`WS /v1/stream`: catch-up then live in strictly increasing position, filters, resume with
`from_position` without gap or duplicate, and a key needed to connect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from eventkeep.api.keys import Role
from tests.api.shopping import create_product, register

ENVELOPE_FIELDS = {
    "position",
    "stream_id",
    "stream_type",
    "stream_version",
    "event_type",
    "schema_version",
    "recorded_at",
    "data",
    "metadata",
}


def receive(socket: Any, count: int) -> list[dict[str, Any]]:
    return [orjson.loads(socket.receive_text()) for _ in range(count)]


def test_catch_up_then_live_in_position_order(client: TestClient) -> None:
    before = [register(client, f"u{i}@example.com") for i in range(3)]
    with client.websocket_connect("/v1/stream") as socket:
        caught_up = receive(socket, 3)
        after = register(client, "late@example.com")
        live = receive(socket, 1)

    events = caught_up + live
    assert [e["position"] for e in events] == [u["position"] for u in [*before, after]]
    assert all(set(e) == ENVELOPE_FIELDS for e in events)
    assert live[0]["event_type"] == "UserRegistered"
    assert live[0]["schema_version"] == 2
    assert live[0]["data"]["email"] == "late@example.com"
    assert live[0]["metadata"]["actor"]


def test_resume_from_the_last_position_received_has_no_gap_and_no_duplicate(
    client: TestClient,
) -> None:
    written = [register(client, f"u{i}@example.com")["position"] for i in range(6)]
    with client.websocket_connect("/v1/stream") as socket:
        first = [e["position"] for e in receive(socket, 2)]
    with client.websocket_connect(f"/v1/stream?from_position={first[-1]}") as socket:
        rest = [e["position"] for e in receive(socket, 4)]

    assert first + rest == written


def test_filters_by_type_and_by_stream(client: TestClient) -> None:
    user = register(client)
    product = create_product(client)
    client.post(f"/v1/products/{product['id']}/stock", json={"delta": 1, "reason": "found"})
    client.post(f"/v1/users/{user['id']}/deactivate", json={"reason": "asked to"})

    with client.websocket_connect("/v1/stream?types=Product") as socket:
        products = receive(socket, 2)
    with client.websocket_connect(
        f"/v1/stream?types=UserDeactivated&stream_id={user['id']}"
    ) as socket:
        deactivations = receive(socket, 1)

    assert [e["event_type"] for e in products] == ["ProductCreated", "ProductStockAdjusted"]
    assert {e["stream_id"] for e in products} == {product["id"]}
    assert [e["event_type"] for e in deactivations] == ["UserDeactivated"]


@pytest.mark.parametrize("credentials", ["", "?access_token=not-a-key"])
def test_connecting_needs_a_known_key(anonymous: TestClient, credentials: str) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        anonymous.websocket_connect(f"/v1/stream{credentials}") as socket,
    ):
        socket.receive_text()
    assert closed.value.code == 4401


def test_a_key_may_come_as_a_subprotocol(
    anonymous: TestClient, client: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    user = register(client)
    key = bearer(Role.client)["Authorization"].removeprefix("Bearer ")
    with anonymous.websocket_connect(
        "/v1/stream", subprotocols=["eventkeep", f"bearer.{key}"]
    ) as socket:
        assert socket.accepted_subprotocol == "eventkeep"
        assert receive(socket, 1)[0]["stream_id"] == user["id"]


def test_a_key_in_the_url_is_refused(
    anonymous: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    key = bearer(Role.client)["Authorization"].removeprefix("Bearer ")
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        anonymous.websocket_connect(f"/v1/stream?access_token={key}") as socket,
    ):
        socket.receive_text()
    assert closed.value.code == 4401
    assert "Authorization" in closed.value.reason


def test_a_position_beyond_64_bits_closes_without_a_traceback(client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/v1/stream?from_position=9223372036854775808") as socket,
    ):
        socket.receive_text()
    assert closed.value.code == 1008
