"""Idempotency-Key, If-Match and the correlation headers of a command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.commands.messages import Command, CommandContext, CommandResult
from tests.api.shopping import USER, answer, register


def event_count(wiring: Wiring) -> int:
    return wiring.shop.recorder.max_notification_id() or 0


def test_same_key_and_body_answer_the_same_and_record_nothing_new(
    client: TestClient, wiring: Wiring
) -> None:
    headers = {"Idempotency-Key": "register-ada"}
    first = answer(client.post("/v1/users", json=USER, headers=headers), 201)
    events = event_count(wiring)

    # Same body with another key order and spacing: still the same request.
    again = client.post(
        "/v1/users",
        content=b'{"last_name":"Lovelace", "first_name":"Ada","email":"ada@example.com"}',
        headers={**headers, "Content-Type": "application/json"},
    )

    assert answer(again, 201) == first
    assert event_count(wiring) == events


def test_same_key_with_another_body_is_refused(client: TestClient, wiring: Wiring) -> None:
    headers = {"Idempotency-Key": "k-1"}
    answer(client.post("/v1/users", json=USER, headers=headers), 201)
    events = event_count(wiring)

    other = client.post("/v1/users", json={**USER, "email": "x@example.com"}, headers=headers)

    assert other.status_code == 409
    assert other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert event_count(wiring) == events


def test_same_key_on_another_path_is_refused(client: TestClient) -> None:
    user = register(client)
    headers = {"Idempotency-Key": "k-2"}
    base = f"/v1/users/{user['id']}"
    answer(client.post(f"{base}/deactivate", json={"reason": "r"}, headers=headers))
    assert client.post(f"{base}/reactivate", headers=headers).status_code == 409


def test_idempotency_keys_belong_to_their_api_key(
    anonymous: TestClient, bearer: Callable[[Role], dict[str, str]], wiring: Wiring
) -> None:
    """Two clients that pick the same key do not see each other's answers."""
    headers = {"Idempotency-Key": "order-1"}
    first = anonymous.post("/v1/users", json=USER, headers={**headers, **bearer(Role.client)})
    other_body = {**USER, "email": "other@example.com"}
    second = anonymous.post(
        "/v1/users", json=other_body, headers={**headers, **bearer(Role.client)}
    )
    assert answer(first, 201)["id"] != answer(second, 201)["id"]


def test_idempotency_key_is_bounded(client: TestClient) -> None:
    response = client.post("/v1/users", json=USER, headers={"Idempotency-Key": "k" * 201})
    assert response.status_code == 422
    fields = response.json()["error"]["details"]["fields"]
    assert [f["field"] for f in fields] == ["header.Idempotency-Key"]


@pytest.mark.parametrize("if_match", ["1", '"1"'])
def test_if_match_on_the_current_version_passes(client: TestClient, if_match: str) -> None:
    user = register(client)
    response = client.post(
        f"/v1/users/{user['id']}/email", json={"email": "a@x.org"}, headers={"If-Match": if_match}
    )
    assert answer(response)["version"] == 2


def test_if_match_on_another_version_is_409(client: TestClient, wiring: Wiring) -> None:
    user = register(client)
    events = event_count(wiring)
    response = client.post(
        f"/v1/users/{user['id']}/email", json={"email": "a@x.org"}, headers={"If-Match": '"7"'}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "VERSION_CONFLICT"
    assert event_count(wiring) == events


@pytest.mark.parametrize("if_match", ["abc", "1.5", "-1", '"', "W/x"])
def test_if_match_must_be_an_integer(client: TestClient, if_match: str) -> None:
    user = register(client)
    response = client.post(f"/v1/users/{user['id']}/reactivate", headers={"If-Match": if_match})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MALFORMED_REQUEST"


class RecordingBus:
    """Records the context each command arrives with."""

    def __init__(self) -> None:
        self.contexts: list[CommandContext] = []

    def handle(self, command: Command, context: CommandContext) -> CommandResult:
        self.contexts.append(context)
        return CommandResult(uuid4(), 1, len(self.contexts), created=True)


@pytest.fixture
def recorded(wiring: Wiring, bearer: Callable[[Role], dict[str, str]]) -> Any:
    bus = RecordingBus()
    app = create_app(replace(wiring, handle=bus.handle))
    key_headers = bearer(Role.client)
    with TestClient(app, headers=key_headers) as client:
        yield client, bus, key_headers["Authorization"].split("_")[1]


def test_context_carries_actor_and_trace_headers(recorded: Any) -> None:
    client, bus, key_id = recorded
    response = client.post(
        "/v1/users",
        json=USER,
        headers={"X-Correlation-ID": "corr-1", "X-Causation-ID": "cause-1"},
    )
    assert response.headers["X-Correlation-ID"] == "corr-1"
    context = bus.contexts[0]
    assert (context.actor, context.correlation_id, context.causation_id) == (
        key_id,
        "corr-1",
        "cause-1",
    )
    assert context.idempotency_key is None and context.request_hash is None


def test_a_missing_correlation_id_is_made_and_echoed(recorded: Any) -> None:
    client, bus, _ = recorded
    response = client.post("/v1/users", json=USER)
    assert response.headers["X-Correlation-ID"] == bus.contexts[0].correlation_id
    assert len(bus.contexts[0].correlation_id) == 36
    assert bus.contexts[0].causation_id is None


def test_request_hash_covers_method_path_and_canonical_body(recorded: Any) -> None:
    client, bus, key_id = recorded
    headers = {"Idempotency-Key": "k"}
    client.post("/v1/users", json={"a": 1, "b": [1, 2]}, headers=headers)  # 422: never sent
    client.post("/v1/users", json=USER, headers=headers)
    client.post("/v1/users", json=dict(reversed(USER.items())), headers=headers)
    client.post("/v1/users", json={**USER, "last_name": "L"}, headers=headers)
    hashes = [context.request_hash for context in bus.contexts]
    assert hashes[0] == hashes[1] != hashes[2]
    assert {context.idempotency_key for context in bus.contexts} == {f"{key_id}:k"}
