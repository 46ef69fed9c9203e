"""Requests the API tests send again and again, as a client of the shop would."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

USER = {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}
PRODUCT = {
    "sku": "KB-01",
    "name": "Keyboard",
    "description": "Mechanical",
    "category": "peripherals",
    "price": "49.90",
    "currency": "EUR",
    "stock": 10,
}


def answer(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "version", "position"}
    return body


def register(client: TestClient, email: str = USER["email"]) -> dict[str, Any]:
    return answer(client.post("/v1/users", json={**USER, "email": email}), 201)


def create_product(client: TestClient, **fields: Any) -> dict[str, Any]:
    return answer(client.post("/v1/products", json={**PRODUCT, **fields}), 201)


def place_order(client: TestClient, user_id: str, product_id: str, quantity: int = 2) -> Any:
    lines = [{"product_id": product_id, "quantity": quantity}]
    return client.post("/v1/orders", json={"user_id": user_id, "lines": lines})


def pay(client: TestClient, order_id: str, amount: str) -> dict[str, Any]:
    body = {"amount": amount, "payment_ref": f"pay-{order_id}"}
    return answer(client.post(f"/v1/orders/{order_id}/pay", json=body))
