"""Queries over HTTP, in both modes: each read model's shapes, read-your-writes with
`X-Min-Position`, the position header, roles, cursors, and a cache that never answers older
than the read model (distributed: events reach the read models through the relay and Kafka)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.keys import Role
from eventkeep.projections.redis_cache import RedisCache
from tests.api.shopping import USER, answer, create_product, pay, place_order, register

pytestmark = pytest.mark.usefixtures("projected")


def after(position: int) -> dict[str, str]:
    """Read-your-writes: wait until the read models include `position`."""
    return {"X-Min-Position": str(position)}


def get(client: TestClient, path: str, position: int = 0, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params, headers=after(position))
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Projection-Position"]) >= position
    return response.json()


def test_a_registered_user_is_found_by_id_and_by_email(client: TestClient) -> None:
    user = register(client)
    by_id = get(client, f"/v1/users/{user['id']}", user["position"])
    assert by_id == {
        "id": user["id"],
        "version": 1,
        **USER,
        "status": "active",
        "registered_at": by_id["registered_at"],
    }
    by_email = get(client, "/v1/users", user["position"], email=USER["email"].upper())
    assert by_email["id"] == user["id"]


def test_unknown_ids_are_404_and_every_answer_says_its_position(client: TestClient) -> None:
    response = client.get("/v1/users/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    response = client.get("/v1/products", params={"limit": 1})
    assert int(response.headers["X-Projection-Position"]) >= 0


def test_a_position_not_reached_in_time_is_503_with_retry_after(
    client: TestClient, wiring: Wiring
) -> None:
    wiring.min_position_wait = 0.2
    response = client.get("/v1/products", headers=after(10**9))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "PROJECTION_BEHIND"
    assert response.headers["Retry-After"] == "1"


def test_products_are_searched_filtered_sorted_and_paged(client: TestClient) -> None:
    made = [
        create_product(client, sku="R1", name="Red kettle", price="30.00", category="kitchen"),
        create_product(client, sku="R2", name="Red lamp", price="10.00", category="living"),
        create_product(client, sku="B1", name="Blue kettle", price="20.00", category="kitchen"),
        create_product(client, sku="G1", name="Green mug", price="5.50", category="kitchen"),
        create_product(
            client, sku="G2", name="Plain mug", description="a red stripe", price="7.00"
        ),
    ]
    last = max(p["position"] for p in made)

    def names(**params: Any) -> list[str]:
        return [p["name"] for p in get(client, "/v1/products", last, **params)["items"]]

    assert names(q="red") == ["Plain mug", "Red kettle", "Red lamp"]  # name or description
    assert names(q="kettles") == ["Blue kettle", "Red kettle"]  # stemmed
    assert names(category="kitchen", sort="price") == ["Green mug", "Blue kettle", "Red kettle"]
    assert names(min_price="7.00", max_price="20.00", sort="-price") == [
        "Blue kettle",
        "Red lamp",
        "Plain mug",
    ]
    product = get(client, f"/v1/products/{made[0]['id']}", last)
    assert (product["price"], product["currency"], product["status"]) == ("30.00", "EUR", "active")

    seen, cursor = [], None
    while True:
        page = get(
            client,
            "/v1/products",
            last,
            sort="price",
            limit=2,
            **({"cursor": cursor} if cursor else {}),
        )
        seen += [p["name"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["Green mug", "Plain mug", "Red lamp", "Blue kettle", "Red kettle"]


def test_bad_query_parameters_are_4xx_with_a_code(client: TestClient) -> None:
    cases = [
        ("/v1/products", {"cursor": "not-a-cursor"}, 400, "INVALID_CURSOR"),
        ("/v1/products", {"sort": "colour"}, 422, "VALIDATION_FAILED"),
        ("/v1/products", {"min_price": "ten"}, 422, "VALIDATION_FAILED"),
        ("/v1/products", {"limit": 1000}, 422, "VALIDATION_FAILED"),
        ("/v1/users", {"email": "nope"}, 422, "VALIDATION_FAILED"),
        ("/v1/users/not-a-uuid", {}, 422, "VALIDATION_FAILED"),
    ]
    for path, params, status, code in cases:
        response = client.get(path, params=params)
        assert response.status_code == status, (path, params, response.text)
        assert response.json()["error"]["code"] == code


def test_orders_by_id_and_by_user_and_status(client: TestClient) -> None:
    user = register(client)
    product = create_product(client)
    first = answer(place_order(client, user["id"], product["id"]), 201)
    second = answer(place_order(client, user["id"], product["id"], quantity=1), 201)
    paid = pay(client, first["id"], "99.80")
    order = get(client, f"/v1/orders/{first['id']}", paid["position"])
    assert (order["status"], order["total"], order["user_id"]) == ("paid", "99.80", user["id"])
    assert order["lines"][0]["product_id"] == product["id"]

    everything = get(client, f"/v1/users/{user['id']}/orders", paid["position"])
    assert [o["id"] for o in everything["items"]] == [second["id"], first["id"]]  # newest first
    placed = get(client, f"/v1/users/{user['id']}/orders", paid["position"], status="placed")
    assert [o["id"] for o in placed["items"]] == [second["id"]]


def test_sales_are_for_analysts_and_count_paid_orders(
    client: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    user = register(client)
    product = create_product(client)
    order = answer(place_order(client, user["id"], product["id"], quantity=3), 201)
    paid = pay(client, order["id"], "149.70")
    answer(place_order(client, user["id"], product["id"]), 201)  # placed, never paid
    window = {"from": "2000-01-01", "to": "2999-12-31"}

    assert client.get("/v1/stats/sales", params=window).status_code == 403
    analyst = bearer(Role.analyst)
    response = client.get(
        "/v1/stats/sales", params=window, headers={**analyst, **after(paid["position"])}
    )
    assert response.status_code == 200, response.text
    [row] = response.json()["items"]
    assert (row["product_id"], row["units"], row["revenue"]) == (product["id"], 3, "149.70")
    backwards = client.get(
        "/v1/stats/sales", params={"from": "2020-01-02", "to": "2020-01-01"}, headers=analyst
    )
    assert backwards.status_code == 422


def test_projections_report_position_and_lag(
    client: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    user = register(client)
    response = client.get(
        "/v1/projections", headers={**bearer(Role.analyst), **after(user["position"])}
    )
    assert response.status_code == 200, response.text
    projections = response.json()["projections"]
    assert [p["name"] for p in projections] == ["users", "products", "orders", "daily_sales"]
    for projection in projections:
        assert projection["position"] >= user["position"]
        assert projection["lag"] == projection["head"] - projection["position"] >= 0
        assert projection["generation"] >= 0


def test_the_cache_never_answers_older_than_the_read_model(client: TestClient) -> None:
    product = create_product(client)
    path = f"/v1/products/{product['id']}"
    assert get(client, path, product["position"])["price"] == "49.90"  # now cached
    for cents in range(1, 6):
        price = f"1{cents}.00"
        changed = answer(client.post(f"{path}/price", json={"price": price, "currency": "EUR"}))
        assert get(client, path, changed["position"])["price"] == price


def test_erased_personal_data_leaves_the_read_model(client: TestClient, bearer: Any) -> None:
    user = register(client)
    get(client, f"/v1/users/{user['id']}", user["position"])
    erased = answer(
        client.delete(f"/v1/users/{user['id']}/personal-data", headers=bearer(Role.admin))
    )
    shown = get(client, f"/v1/users/{user['id']}", erased["position"])
    assert (shown["email"], shown["first_name"], shown["last_name"]) == (None, None, None)
    assert client.get("/v1/users", params={"email": USER["email"]}).status_code == 404


def test_queries_answer_from_the_read_model_when_redis_is_down(
    client: TestClient, wiring: Wiring
) -> None:
    wiring.queries.cache = RedisCache("redis://127.0.0.1:1/0")  # nothing listens there
    product = create_product(client)
    shown = get(client, f"/v1/products/{product['id']}", product["position"])
    assert (shown["id"], shown["price"]) == (product["id"], "49.90")


class OneBehind:
    """Progress where one read model lags far behind the others."""

    def __init__(self, real: Any, behind: str) -> None:
        self._real = real
        self._behind = behind

    def position_of(self, name: str) -> int:
        return 0 if name == self._behind else self._real.position_of(name)

    def generation_of(self, name: str) -> int:
        return self._real.generation_of(name)

    def quarantined_of(self, name: str) -> Any:
        return self._real.quarantined_of(name)

    def cache_position_of(self, name: str) -> int:
        return self._real.cache_position_of(name)

    def want(self) -> None:
        self._real.want()


def test_a_query_waits_only_for_the_read_model_it_reads(client: TestClient, wiring: Wiring) -> None:
    user = register(client)
    get(client, f"/v1/users/{user['id']}", user["position"])  # every read model is there
    wiring.queries.progress = OneBehind(wiring.queries.progress, "products")
    wiring.min_position_wait = 0.2

    assert get(client, f"/v1/users/{user['id']}", user["position"])["id"] == user["id"]
    assert get(client, f"/v1/users/{user['id']}/orders", user["position"])["items"] == []
    behind = client.get("/v1/products", headers=after(user["position"]))
    assert behind.status_code == 503
    assert behind.json()["error"]["details"]["projection"] == "products"
    assert behind.headers["X-Projection-Position"] == "0"
