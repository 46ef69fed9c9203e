"""Bearer API keys: 401 without a valid key, 403 for the wrong role, admin may do everything."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.keys import ApiKeyStore, Role
from tests.api.shopping import USER

Bearer = Callable[[Role], dict[str, str]]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer ek_0123456789abcdef_" + "x" * 43},
        {"Authorization": "Bearer not-a-key"},
    ],
)
def test_missing_or_bad_key_is_401(anonymous: TestClient, headers: dict[str, str]) -> None:
    response = anonymous.post("/v1/users", json=USER, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_revoked_key_is_refused(anonymous: TestClient, keys: ApiKeyStore) -> None:
    issued = keys.create(Role.client)
    headers = {"Authorization": f"Bearer {issued.secret_key}"}
    assert anonymous.post("/v1/users", json=USER, headers=headers).status_code == 201

    keys.revoke(issued.key.id)

    assert anonymous.post("/v1/users", json=USER, headers=headers).status_code == 401


@pytest.mark.parametrize("role", [Role.analyst, Role.auditor])
def test_commands_need_the_client_role(anonymous: TestClient, bearer: Bearer, role: Role) -> None:
    response = anonymous.post("/v1/users", json=USER, headers=bearer(role))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"


def test_admin_may_send_client_commands(anonymous: TestClient, bearer: Bearer) -> None:
    assert anonymous.post("/v1/users", json=USER, headers=bearer(Role.admin)).status_code == 201


def test_erasure_is_admin_only(client: TestClient) -> None:
    user = client.post("/v1/users", json=USER).json()
    response = client.delete(f"/v1/users/{user['id']}/personal-data")
    assert response.status_code == 403


def test_auth_comes_before_body_validation(anonymous: TestClient) -> None:
    """Without a key nobody learns what a valid body looks like."""
    assert anonymous.post("/v1/users", json={"nonsense": 1}).status_code == 401
