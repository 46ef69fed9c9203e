"""Strict input at the door, in both modes: values the read models cannot hold, control
characters, numbers sent as bools or strings, forged cursors, out-of-range integers and a
malformed If-Match are refused with a 4xx and a code, never a 500; emails are found in the
form they were claimed in."""

from __future__ import annotations

import base64
import json
from typing import Any
from uuid import uuid4

import orjson
import pytest
from fastapi.testclient import TestClient

from eventkeep.domain.bounds import INT64_MAX, MAX_ORDER_TOTAL, MAX_PRICE
from tests.api.shopping import PRODUCT, USER, answer, create_product, place_order, register

pytestmark = pytest.mark.usefixtures("projected")


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def fields(response: Any) -> list[str]:
    error = refused(response, 422, "VALIDATION_FAILED")
    if "fields" in error["details"]:
        return [f["field"] for f in error["details"]["fields"]]
    return [error["details"]["field"]]


def test_prices_and_totals_beyond_the_read_models_are_refused(client: TestClient) -> None:
    probe = client.post("/v1/products", json={**PRODUCT, "price": "999999999999.99"})
    assert fields(probe) == ["body.price"]
    over = client.post("/v1/products", json={**PRODUCT, "price": "1000000.01"})
    assert fields(over) == ["body.price"]
    product = create_product(client, price=str(MAX_PRICE), stock=1_000_000_000)
    user = register(client)
    assert fields(place_order(client, user["id"], product["id"], quantity=100_000)) == ["lines"]
    most = int(MAX_ORDER_TOTAL / MAX_PRICE)
    order = answer(place_order(client, user["id"], product["id"], quantity=most), 201)
    paid = client.post(
        f"/v1/orders/{order['id']}/pay",
        json={"amount": str(MAX_ORDER_TOTAL), "payment_ref": "p-1"},
    )
    answer(paid)
    shown = client.get(
        f"/v1/orders/{order['id']}", headers={"X-Min-Position": str(paid.json()["position"])}
    )
    assert shown.status_code == 200, shown.text
    assert shown.json()["total"] == str(MAX_ORDER_TOTAL)


def test_stock_beyond_its_bound_is_refused(client: TestClient) -> None:
    assert fields(client.post("/v1/products", json={**PRODUCT, "stock": 10**12})) == ["body.stock"]
    product = create_product(client, stock=1_000_000_000)
    adjust = client.post(
        f"/v1/products/{product['id']}/stock", json={"delta": 1, "reason": "delivery"}
    )
    assert fields(adjust) == ["delta"]


@pytest.mark.parametrize("char", ["\u0000", "\u001b", "\u007f", "\u0085"])
def test_control_characters_are_refused_naming_the_field(client: TestClient, char: str) -> None:
    bad = f"a{char}b"
    assert fields(client.post("/v1/products", json={**PRODUCT, "name": bad})) == ["body.name"]
    assert fields(client.post("/v1/products", json={**PRODUCT, "description": bad})) == [
        "body.description"
    ]
    assert fields(client.post("/v1/users", json={**USER, "first_name": bad})) == ["body.first_name"]
    assert fields(client.post("/v1/users", json={**USER, "email": f"a{char}@b.co"})) == [
        "body.email"
    ]
    product = create_product(client)
    stock = client.post(f"/v1/products/{product['id']}/stock", json={"delta": 1, "reason": bad})
    assert fields(stock) == ["body.reason"]


def test_a_lone_surrogate_is_refused(client: TestClient) -> None:
    raw = orjson.dumps({**PRODUCT}).replace(b'"Keyboard"', b'"Key\\ud800board"')
    response = client.post(
        "/v1/products", content=raw, headers={"Content-Type": "application/json"}
    )
    assert fields(response) == ["body.name"]


def test_line_breaks_are_kept_in_multi_line_fields(client: TestClient) -> None:
    create_product(client, description="line one\nline two\ttabbed")


@pytest.mark.parametrize("value", [True, "5", 5.0])
def test_numbers_are_never_bools_strings_or_floats(client: TestClient, value: Any) -> None:
    product = create_product(client)
    stock = client.post(
        f"/v1/products/{product['id']}/stock", json={"delta": value, "reason": "delivery"}
    )
    assert fields(stock) == ["body.delta"]
    assert fields(client.post("/v1/products", json={**PRODUCT, "stock": value})) == ["body.stock"]
    lines = [{"product_id": product["id"], "quantity": value}]
    order = client.post("/v1/orders", json={"user_id": str(uuid4()), "lines": lines})
    assert fields(order) == ["body.lines.0.quantity"]


def test_an_email_is_found_in_the_form_it_was_claimed_in(client: TestClient) -> None:
    kelvin = "\u212aelvin@example.org"  # KELVIN SIGN
    user = register(client, kelvin)
    wait = {"X-Min-Position": str(user["position"])}
    for asked in ("kelvin@example.org", "KELVIN@example.org", kelvin):
        found = client.get("/v1/users", params={"email": asked}, headers=wait)
        assert found.status_code == 200, (asked, found.text)
        assert found.json()["id"] == user["id"]
    assert client.post("/v1/users", json={**USER, "email": "Kelvin@Example.org"}).status_code == 409


def _cursor(values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


FORGED = [
    _cursor([[1], [2]]),
    _cursor([9223372036854775808, "x"]),
    _cursor([-9223372036854775809, "x"]),
    _cursor(["a\u0000b", "x"]),
    _cursor([1.5, "x"]),
    _cursor([True, "x"]),
    _cursor({"a": 1}),
    _cursor([1, 2, 3]),
    _cursor(["x", None]),
    _cursor(["x", "y" * 200]),
    "%%%",
    "bm90IGpzb24",
]


@pytest.mark.parametrize("cursor", FORGED)
@pytest.mark.parametrize("sort", ["name", "price", "-price", "newest"])
def test_forged_cursors_are_400(client: TestClient, cursor: str, sort: str) -> None:
    response = client.get("/v1/products", params={"cursor": cursor, "sort": sort})
    refused(response, 400, "INVALID_CURSOR")


@pytest.mark.parametrize("cursor", FORGED)
def test_forged_order_cursors_are_400(client: TestClient, cursor: str) -> None:
    response = client.get(f"/v1/users/{uuid4()}/orders", params={"cursor": cursor})
    refused(response, 400, "INVALID_CURSOR")


def test_a_cursor_given_by_the_api_still_pages(client: TestClient) -> None:
    last = None
    for sku in ("A-1", "A-2", "A-3"):
        last = create_product(client, sku=sku, name=f"Item {sku}")
    assert last is not None
    wait = {"X-Min-Position": str(last["position"])}
    for sort in ("name", "price", "-price", "newest"):
        first = client.get("/v1/products", params={"limit": 2, "sort": sort}, headers=wait)
        cursor = first.json()["next_cursor"]
        second = client.get("/v1/products", params={"limit": 2, "sort": sort, "cursor": cursor})
        assert second.status_code == 200, second.text
        assert len(second.json()["items"]) == 1


@pytest.mark.parametrize(
    "path, params, headers",
    [
        ("/v1/products", {"limit": str(2**63)}, {}),
        ("/v1/products", {"limit": "-1"}, {}),
        ("/v1/products", {"min_price": "1" * 30 + ".00"}, {}),
        ("/v1/products", {}, {"X-Min-Position": str(2**63)}),
        ("/v1/products", {}, {"X-Min-Position": "-1"}),
        ("/v1/products", {}, {"X-Min-Position": "1e3"}),
    ],
)
def test_integers_out_of_range_are_4xx_never_500(
    client: TestClient, path: str, params: dict[str, str], headers: dict[str, str]
) -> None:
    response = client.get(path, params=params, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"] in ("VALIDATION_FAILED", "MALFORMED_REQUEST")


def test_the_largest_position_is_accepted(client: TestClient) -> None:
    response = client.get("/v1/products", headers={"X-Min-Position": str(INT64_MAX)})
    refused(response, 503, "PROJECTION_BEHIND")


@pytest.mark.parametrize("if_match", ['"3', '3"', "W/3", "", "3 4", "-1", "1" * 30])
def test_a_malformed_if_match_is_400(client: TestClient, if_match: str) -> None:
    user = register(client)
    response = client.post(
        f"/v1/users/{user['id']}/deactivate",
        json={"reason": "asked"},
        headers={"If-Match": if_match},
    )
    refused(response, 400, "MALFORMED_REQUEST")


@pytest.mark.parametrize("if_match", ["1", '"1"'])
def test_a_well_formed_if_match_is_taken(client: TestClient, if_match: str) -> None:
    user = register(client)
    response = client.post(
        f"/v1/users/{user['id']}/deactivate",
        json={"reason": "asked"},
        headers={"If-Match": if_match},
    )
    answer(response)


@pytest.mark.parametrize("query", ["q=a%00b", "category=a%00b", "q=%1b"])
def test_control_characters_in_a_query_are_4xx(client: TestClient, query: str) -> None:
    response = client.get(f"/v1/products?{query}")
    assert 400 <= response.status_code < 500, response.text


def test_an_unknown_query_parameter_is_refused_naming_it(client: TestClient) -> None:
    response = client.get("/v1/products", params={"sort": "name", "categroy": "x"})
    assert fields(response) == ["query.categroy"]
    assert client.get("/v1/products", params={"sort": "name"}).status_code == 200
