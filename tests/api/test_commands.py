"""Every command endpoint's happy path, and one shop flow end to end, over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from eventkeep.api.keys import Role
from tests.api.shopping import answer, create_product, place_order, register


def test_user_commands_answer_the_new_version_and_position(client: TestClient) -> None:
    user = register(client)
    assert user["version"] == 1
    base = f"/v1/users/{user['id']}"

    changed = answer(client.post(f"{base}/email", json={"email": "ada@lovelace.org"}))
    deactivated = answer(client.post(f"{base}/deactivate", json={"reason": "asked to"}))
    reactivated = answer(client.post(f"{base}/reactivate"))

    assert [changed["version"], deactivated["version"], reactivated["version"]] == [2, 3, 4]
    assert user["position"] < changed["position"] < deactivated["position"]
    assert deactivated["position"] < reactivated["position"]
    assert {changed["id"], deactivated["id"], reactivated["id"]} == {user["id"]}


def test_product_commands(client: TestClient) -> None:
    product = create_product(client)
    base = f"/v1/products/{product['id']}"

    details = {"name": "Keyboard 2", "description": "Quieter"}
    versions = [
        answer(client.post(f"{base}/details", json=details))["version"],
        answer(client.post(f"{base}/price", json={"price": "44.00", "currency": "EUR"}))["version"],
        answer(client.post(f"{base}/stock", json={"delta": -3, "reason": "damaged"}))["version"],
        answer(client.post(f"{base}/discontinue"))["version"],
    ]
    assert versions == [2, 3, 4, 5]


def test_order_lifecycle_placed_paid_shipped_delivered(client: TestClient) -> None:
    user = register(client)
    product = create_product(client, price="10.00")
    order = answer(place_order(client, user["id"], product["id"], quantity=3), 201)
    base = f"/v1/orders/{order['id']}"

    paid = answer(client.post(f"{base}/pay", json={"amount": "30.00", "payment_ref": "pay-1"}))
    shipped = answer(client.post(f"{base}/ship", json={"tracking_number": "TRACK-1"}))
    delivered = answer(client.post(f"{base}/deliver"))

    assert [order["version"], paid["version"], shipped["version"], delivered["version"]] == [
        1,
        2,
        3,
        4,
    ]
    assert order["position"] < paid["position"] < shipped["position"] < delivered["position"]


def test_cancelling_an_order_releases_its_stock(client: TestClient) -> None:
    user = register(client)
    product = create_product(client, stock=2)
    order = answer(place_order(client, user["id"], product["id"], quantity=2), 201)
    # All the stock is reserved now.
    assert place_order(client, user["id"], product["id"], quantity=1).status_code == 409

    answer(client.post(f"/v1/orders/{order['id']}/cancel", json={"reason": "changed mind"}))

    answer(place_order(client, user["id"], product["id"], quantity=2), 201)


def test_admin_erases_personal_data(client: TestClient, bearer: Any) -> None:
    user = register(client)
    response = client.delete(f"/v1/users/{user['id']}/personal-data", headers=bearer(Role.admin))
    assert answer(response)["version"] == 2


def test_shop_flow_as_curl_would_send_it(client: TestClient) -> None:
    """The README's walk-through: raw JSON bodies, headers as a shell user types them."""
    json_headers = {"Content-Type": "application/json"}
    user = answer(
        client.post(
            "/v1/users",
            content=b'{"email": "grace@example.com", "first_name": "Grace", "last_name": "Hopper"}',
            headers=json_headers,
        ),
        201,
    )
    product = answer(
        client.post(
            "/v1/products",
            content=b'{"sku": "MUG", "name": "Mug", "description": "", "category": "kitchen",'
            b' "price": "7.50", "currency": "USD", "stock": 5}',
            headers=json_headers,
        ),
        201,
    )
    order = answer(
        client.post(
            "/v1/orders",
            content=(
                f'{{"user_id": "{user["id"]}", "lines": '
                f'[{{"product_id": "{product["id"]}", "quantity": 2}}]}}'
            ).encode(),
            headers=json_headers,
        ),
        201,
    )
    paid = answer(
        client.post(
            f"/v1/orders/{order['id']}/pay",
            content=b'{"amount": "15.00", "payment_ref": "ch_1"}',
            headers={**json_headers, "If-Match": str(order["version"])},
        )
    )
    assert paid == {"id": order["id"], "version": 2, "position": paid["position"]}
    # The order appended its reservation with it: the product moved to version 2.
    stale = client.post(f"/v1/products/{product['id']}/discontinue", headers={"If-Match": '"1"'})
    assert stale.status_code == 409
