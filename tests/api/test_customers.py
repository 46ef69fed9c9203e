"""Customers' own accounts, in both modes: a password set at registration or later (never in
the event log or the logs), login with access and refresh tokens (rotation, reuse revokes the
login, logout), lockout and equal answers for unknown users and wrong passwords, every route
with the owner's token and another customer's, erasure, and the OpenAPI scheme."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.accounts import LOCK_AFTER
from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.api.ratelimit import LocalLimiter
from tests.api.shopping import USER, create_product

pytestmark = pytest.mark.usefixtures("projected")


@pytest.fixture(autouse=True)
def roomy_login_limits(wiring: Wiring) -> None:
    """The login limits are shared through Redis, and every test logs in from `testclient`:
    each test gets limits of its own (the one about them sets tight ones)."""
    assert wiring.accounts is not None
    wiring.accounts.login_limiter = LocalLimiter(rate=1000, burst=1000)
    wiring.min_position_wait = 15  # the first events through new Kafka topics can be slow


PASSWORD = "correct horse battery staple"


def customer(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    """A user registered with a password, once the users read model shows them."""
    response = client.post("/v1/users", json={**USER, "email": email, "password": password})
    assert response.status_code == 201, response.text
    user = response.json()
    deadline = time.monotonic() + 30  # the first events through a new Kafka topic are slow
    while True:
        wait = {"X-Min-Position": str(user["position"])}
        seen = client.get(f"/v1/users/{user['id']}", headers=wait)
        if seen.status_code != 503 or time.monotonic() > deadline:
            break
    assert seen.status_code == 200, seen.text
    return user


def login(client: TestClient, email: str, password: str = PASSWORD) -> Any:
    return client.post("/v1/auth/login", json={"email": email, "password": password})


def tokens(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = login(client, email, password)
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stored_events(wiring: Wiring) -> bytes:
    recorder = wiring.shop.recorder
    return b"".join(n.state for n in recorder.select_notifications(start=1, limit=10_000))


def test_a_password_is_kept_hashed_and_never_in_the_log_or_the_logs(
    client: TestClient, wiring: Wiring, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = customer(client, "ada@example.com")
    later = "another secret phrase"
    changed = client.post(f"/v1/users/{user['id']}/password", json={"password": later})
    assert changed.status_code == 204, changed.text
    [row] = wiring.keys.execute(
        [("SELECT password_hash FROM customer_credentials WHERE user_id = %s", (user["id"],))]
    )
    assert row[0].startswith("$argon2id$")
    events = stored_events(wiring)
    for secret in (PASSWORD, later, row[0]):
        assert secret.encode() not in events
    assert login(client, "ada@example.com").status_code == 401  # the old one no longer
    assert login(client, "ADA@example.com", later).status_code == 200
    for secret in (PASSWORD, later, row[0]):
        assert secret not in caplog.text


def test_unknown_users_and_wrong_passwords_get_the_same_answer_and_lock_alike(
    client: TestClient,
) -> None:
    customer(client, "ada@example.com")
    started = time.perf_counter()
    wrong = login(client, "ada@example.com", "not the password")
    wrong_took = time.perf_counter() - started
    started = time.perf_counter()
    unknown = login(client, "nobody@example.com", "not the password")
    unknown_took = time.perf_counter() - started
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert unknown_took > wrong_took / 3  # both verify an argon2id hash

    for email in ("ada@example.com", "nobody@example.com"):
        for _ in range(LOCK_AFTER - 1):  # one failure each above
            login(client, email, "not the password")
        locked = login(client, email)  # even the right password, while locked
        assert locked.status_code == 429, (email, locked.text)
        assert locked.json()["error"]["code"] == "RATE_LIMITED"
        assert int(locked.headers["Retry-After"]) > 0


def test_logins_are_limited_per_address_and_per_account(client: TestClient, wiring: Wiring) -> None:
    assert wiring.accounts is not None
    wiring.accounts.login_limiter = LocalLimiter(rate=0.001, burst=3)
    customer(client, "ada@example.com")
    for _ in range(3):
        assert login(client, "ada@example.com").status_code == 200
    limited = login(client, "ada@example.com")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    wiring.accounts.login_limiter = LocalLimiter(rate=0.001, burst=3)
    for email in ("a@example.com", "b@example.com", "c@example.com"):  # one address, 3 accounts
        assert login(client, email).status_code == 401
    assert login(client, "d@example.com").status_code == 429


def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_login(
    client: TestClient, anonymous: TestClient
) -> None:
    user = customer(client, "ada@example.com")
    first = tokens(client, "ada@example.com")
    assert anonymous.get(
        f"/v1/users/{user['id']}", headers=bearer(first["access_token"])
    ).is_success
    refreshed = anonymous.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert anonymous.get(
        f"/v1/users/{user['id']}", headers=bearer(second["access_token"])
    ).is_success

    reused = anonymous.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    # The whole login is revoked: the newer refresh token and the access tokens too.
    again = anonymous.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert again.status_code == 401
    gone = anonymous.get(f"/v1/users/{user['id']}", headers=bearer(second["access_token"]))
    assert gone.status_code == 401
    forged = second["access_token"][:-2] + ("AA" if second["access_token"][-2:] != "AA" else "BB")
    assert anonymous.get("/v1/products", headers=bearer(forged)).status_code == 401


def test_logout_revokes_the_login(client: TestClient, anonymous: TestClient) -> None:
    user = customer(client, "ada@example.com")
    issued = tokens(client, "ada@example.com")
    out = anonymous.post("/v1/auth/logout", headers=bearer(issued["access_token"]))
    assert out.status_code == 204, out.text
    after = anonymous.get(f"/v1/users/{user['id']}", headers=bearer(issued["access_token"]))
    assert after.status_code == 401
    refused = anonymous.post("/v1/auth/refresh", json={"refresh_token": issued["refresh_token"]})
    assert refused.status_code == 401
    assert client.post("/v1/auth/logout").status_code == 403  # an API key does not log out


def test_every_route_with_the_owners_token_and_another_customers(
    client: TestClient, anonymous: TestClient
) -> None:
    owner = customer(client, "ada@example.com")
    customer(client, "grace@example.com")
    product = create_product(client)
    mine = bearer(tokens(client, "ada@example.com")["access_token"])
    theirs = bearer(tokens(client, "grace@example.com")["access_token"])
    line = [{"product_id": product["id"], "quantity": 1}]
    placed = anonymous.post(
        "/v1/orders", json={"user_id": owner["id"], "lines": line}, headers=mine
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    wait = {"X-Min-Position": str(order["position"])}
    uid, oid, pid = owner["id"], order["id"], product["id"]

    owned: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("GET", f"/v1/users/{uid}", None, 200),
        ("GET", f"/v1/users/{uid}/orders", None, 200),
        ("GET", f"/v1/orders/{oid}", None, 200),
        ("POST", f"/v1/users/{uid}/password", {"password": "a new long password"}, 204),
        ("POST", f"/v1/users/{uid}/email", {"email": "ada2@example.com"}, 200),
        ("POST", "/v1/orders", {"user_id": uid, "lines": line}, 201),
    ]
    for method, path, body, status in owned:
        as_other = anonymous.request(method, path, json=body, headers={**theirs, **wait})
        assert as_other.status_code == 404, (method, path, as_other.text)
        assert as_other.json()["error"]["code"] == "NOT_FOUND"
        as_owner = anonymous.request(method, path, json=body, headers={**mine, **wait})
        assert as_owner.status_code == status, (method, path, as_owner.text)

    query = {"query": "{ products { edges { node { id } } } }"}
    for headers in (mine, theirs):
        assert anonymous.get(f"/v1/products/{pid}", headers={**headers, **wait}).is_success
        assert anonymous.get("/v1/products", headers=headers).is_success
        assert anonymous.post("/v1/graphql", json=query, headers=headers).is_success
    # An analyst's field in GraphQL is refused to a customer.
    analyst_field = {"query": "{ products { edges { node { orderCount } } } }"}
    refused = anonymous.post("/v1/graphql", json=analyst_field, headers=mine).json()
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    admitted = {(m, p) for m, p, _, _ in owned} | {
        ("GET", f"/v1/products/{pid}"),
        ("GET", "/v1/products"),
        ("POST", "/v1/graphql"),
        ("POST", "/v1/auth/login"),
        ("POST", "/v1/auth/refresh"),
        ("POST", "/v1/auth/logout"),
    }
    ids = {"user_id": uid, "order_id": oid, "product_id": pid, "stream_id": uid, "webhook_id": "0"}
    refused_routes = 0
    described = client.get("/openapi.json").json()["paths"]
    for template, operations in described.items():
        if not template.startswith("/v1/"):
            continue
        path = template.format(**{k: v for k, v in ids.items() if "{" + k + "}" in template})
        for method in sorted(m.upper() for m in operations):
            if (method, path) in admitted:
                continue
            answer = anonymous.request(method, path, json={}, headers=mine)
            assert answer.status_code == 403, (method, template, answer.text)
            refused_routes += 1
    assert refused_routes >= 15


def test_erasure_deletes_the_credentials(client: TestClient, wiring: Wiring) -> None:
    user = customer(client, "ada@example.com")
    issued = tokens(client, "ada@example.com")
    admin = {"Authorization": f"Bearer {wiring.keys.create(Role.admin, 'erasure').secret_key}"}
    erased = client.delete(f"/v1/users/{user['id']}/personal-data", headers=admin)
    assert erased.status_code == 200, erased.text
    for table in ("customer_credentials", "customer_sessions", "customer_refresh_tokens"):
        rows = wiring.keys.execute([(f"SELECT * FROM {table} WHERE user_id = %s", (user["id"],))])
        assert rows == [], table
    assert login(client, "ada@example.com").status_code == 401
    gone = client.post("/v1/auth/refresh", json={"refresh_token": issued["refresh_token"]})
    assert gone.status_code == 401


def test_the_openapi_shows_the_customer_token_scheme(client: TestClient) -> None:
    described = client.get("/openapi.json").json()
    schemes = described["components"]["securitySchemes"]
    assert schemes["CustomerToken"]["scheme"] == "bearer"
    own_user = described["paths"]["/v1/users/{user_id}"]["get"]["security"]
    assert {"CustomerToken": []} in own_user and {"HTTPBearer": []} in own_user
    assert {"CustomerToken": []} not in described["paths"]["/v1/products"]["post"]["security"]
