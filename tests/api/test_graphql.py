"""Product queries over GraphQL, in both modes: the same search, filters, sorts and pages as
GET /v1/products, Relay connections, analysts' fields, the REST door (keys, roles,
X-Min-Position), the limits, batched loading counted in statements, and the printed schema."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from eventkeep.api.bootstrap import Wiring
from eventkeep.api.graphql import MAX_PAGE, printed_schema
from eventkeep.api.keys import Role
from tests.api.shopping import create_product, pay, place_order, register

pytestmark = pytest.mark.usefixtures("projected")


@pytest.fixture(autouse=True)
def patient(wiring: Wiring) -> None:
    """The first events through new Kafka topics can take seconds on a busy machine."""
    wiring.min_position_wait = 15


PAGE = """query($q: String, $category: String, $min: String, $max: String,
  $status: ProductStatus, $inStock: Boolean, $sort: ProductSort! = NAME, $first: Int! = 20,
  $after: String) {
  products(q: $q, category: $category, minPrice: $min, maxPrice: $max, status: $status,
           inStock: $inStock, sort: $sort, first: $first, after: $after) {
    edges { cursor node { id name price stock status } }
    pageInfo { hasNextPage endCursor }
  }
}"""


def graphql(
    client: TestClient, query: str, position: int = 0, headers: dict[str, str] | None = None,
    **variables: Any,
) -> Any:  # fmt: skip
    response = client.post(
        "/v1/graphql",
        json={"query": query, "variables": variables},
        headers={"X-Min-Position": str(position), **(headers or {})},
    )
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Projection-Position"]) >= position
    return response.json()


def data(answer: Any) -> Any:
    assert "errors" not in answer, answer
    return answer["data"]


def codes(answer: Any) -> list[str]:
    return [error.get("extensions", {}).get("code") for error in answer["errors"]]


def catalog(client: TestClient) -> tuple[dict[str, str], int]:
    made = {
        "Red kettle": create_product(client, sku="R1", name="Red kettle", price="30.00",
                                     category="kitchen"),
        "Red lamp": create_product(client, sku="R2", name="Red lamp", price="10.00",
                                   category="living", stock=0),
        "Blue kettle": create_product(client, sku="B1", name="Blue kettle", price="20.00",
                                      category="kitchen"),
        "Plain mug": create_product(client, sku="G2", name="Plain mug",
                                    description="a red stripe", price="7.00"),
    }  # fmt: skip
    gone = client.post(f"/v1/products/{made['Blue kettle']['id']}/discontinue")
    assert gone.status_code == 200, gone.text
    last = max([p["position"] for p in made.values()] + [gone.json()["position"]])
    return {name: p["id"] for name, p in made.items()}, last


def test_products_are_searched_filtered_sorted_and_paged_as_over_rest(
    client: TestClient,
) -> None:
    ids, last = catalog(client)

    def names(**variables: Any) -> list[str]:
        page = data(graphql(client, PAGE, last, **variables))["products"]
        return [edge["node"]["name"] for edge in page["edges"]]

    def rest(**params: Any) -> list[str]:
        response = client.get("/v1/products", params=params, headers={"X-Min-Position": str(last)})
        return [p["name"] for p in response.json()["items"]]

    assert names(q="red") == ["Plain mug", "Red kettle", "Red lamp"] == rest(q="red")
    assert names(category="kitchen", sort="PRICE") == ["Blue kettle", "Red kettle"]
    assert names(min="8.00", max="25.00", sort="PRICE_DESC") == ["Blue kettle", "Red lamp"]
    assert names(status="DISCONTINUED") == ["Blue kettle"] == rest(status="discontinued")
    assert names(inStock=False) == ["Red lamp"] == rest(in_stock=False)
    assert names(status="ACTIVE", inStock=True, sort="PRICE") == ["Plain mug", "Red kettle"]

    seen, after = [], None
    while True:
        page = data(graphql(client, PAGE, last, first=1, sort="PRICE", after=after))["products"]
        seen += [edge["node"]["name"] for edge in page["edges"]]
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == ["Plain mug", "Red lamp", "Blue kettle", "Red kettle"]
    # Any edge's cursor continues after that edge.
    two = data(graphql(client, PAGE, last, first=2, sort="PRICE"))["products"]["edges"]
    rest_after = data(graphql(client, PAGE, last, sort="PRICE", after=two[0]["cursor"]))
    assert rest_after["products"]["edges"][0]["node"]["name"] == "Red lamp"

    one = graphql(client, "query($id: ID!) { product(id: $id) { name price } }", last,
                  id=ids["Red lamp"])  # fmt: skip
    assert data(one) == {"product": {"name": "Red lamp", "price": "10.00"}}
    unknown = '{ product(id: "00000000-0000-0000-0000-000000000000") { name } }'
    assert data(graphql(client, unknown)) == {"product": None}
    assert codes(graphql(client, PAGE, after="not-a-cursor")) == ["INVALID_CURSOR"]


SALES = """query($start: Date!, $end: Date!, $first: Int! = 20) {
  products(first: $first) { edges { node { id orderCount dailySales(start: $start, end: $end)
    { day units revenue currency } } } }
}"""


def test_order_counts_and_daily_sales_are_for_analysts(
    client: TestClient, bearer: Callable[[Role], dict[str, str]]
) -> None:
    user = register(client)
    product = create_product(client)
    placed = place_order(client, user["id"], product["id"], quantity=3).json()
    paid = pay(client, placed["id"], "149.70")
    place_order(client, user["id"], product["id"], quantity=1)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    window = {"start": today, "end": today}

    refused = graphql(client, SALES, paid["position"], **window)
    assert refused["data"] is None and set(codes(refused)) == {"FORBIDDEN"}

    analyst = bearer(Role.analyst)
    answer = data(graphql(client, SALES, paid["position"] + 2, analyst, **window))
    [edge] = answer["products"]["edges"]
    assert edge["node"]["orderCount"] == 2
    assert edge["node"]["dailySales"] == [
        {"day": today, "units": 3, "revenue": "149.70", "currency": "EUR"}
    ]
    too_long = {"start": "2020-01-01", "end": "2022-01-01"}
    assert codes(graphql(client, SALES, 0, analyst, **too_long)) == ["VALIDATION_FAILED"]


@contextlib.contextmanager
def statements(wiring: Wiring) -> Iterator[list[str]]:
    """Every SQL statement the read models' queries run while the block runs (a counting
    cursor around the real one, in SQLite or PostgreSQL); progress and quarantine reads of the
    background feed or poller are left out."""
    seen: list[str] = []
    databases = {id(model.db): model.db for model in wiring.queries.models.models.values()}
    originals = {key: db.reading for key, db in databases.items()}

    class Counted:
        def __init__(self, cursor: Any) -> None:
            self._cursor = cursor

        def execute(self, sql: str, params: Any = ()) -> Any:
            # The feed's or the poller's (progress, quarantined streams), not the request's.
            if "rm_progress" not in sql and "rm_quarantine" not in sql:
                seen.append(sql)
            return self._cursor.execute(sql, params)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cursor, name)

    def counting(reading: Any) -> Any:
        @contextlib.contextmanager
        def wrapped(**options: Any) -> Iterator[Any]:
            with reading(**options) as cursor:
                yield Counted(cursor)

        return wrapped

    for db in databases.values():
        db.reading = counting(db.reading)  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        for key, db in databases.items():
            db.reading = originals[key]  # type: ignore[method-assign]


def test_a_page_loads_its_analyst_fields_in_one_statement_each(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]]
) -> None:
    user = register(client)
    made = [create_product(client, sku=f"S{i}", name=f"Item {i}") for i in range(8)]
    orders = [place_order(client, user["id"], p["id"], quantity=1).json() for p in made]
    last = max(o["position"] for o in orders)
    analyst = bearer(Role.analyst)
    window = {"start": "2020-01-01", "end": "2020-12-31"}
    graphql(client, SALES, last, analyst, first=1, **window)  # reached; caches warm

    counts = []
    for first in (2, 8):
        with statements(wiring) as seen:
            answer = data(graphql(client, SALES, last, analyst, first=first, **window))
        assert len(answer["products"]["edges"]) == first
        assert all(e["node"]["orderCount"] == 1 for e in answer["products"]["edges"])
        counts.append(len(seen))
    assert counts == [3, 3]  # the page, the order counts, the sales: whatever the page size

    ids = [p["id"] for p in made[:5]]
    aliased = (
        "{" + " ".join(f'p{i}: product(id: "{pid}") {{ name }}' for i, pid in enumerate(ids)) + "}"
    )
    with statements(wiring) as seen:
        assert len(data(graphql(client, aliased, last))) == 5
    assert len(seen) == 1


def test_limits_answer_errors_before_reading(client: TestClient, wiring: Wiring) -> None:
    with statements(wiring) as seen:
        too_big = graphql(client, PAGE, first=MAX_PAGE + 1)
        assert codes(too_big) == ["VALIDATION_FAILED"] and too_big["data"] is None
        deep = '{ products { edges { node { dailySales(start: "2020-01-01", end: "2020-01-02")'
        deep += " { day { a { b { c } } } } } } } }"
        messages = [e["message"] for e in graphql(client, deep)["errors"]]
        assert any("exceeds maximum operation depth" in m for m in messages), messages
        aliases = (
            "{"
            + " ".join(f"a{i}: products {{ pageInfo {{ hasNextPage }} }}" for i in range(11))
            + "}"
        )
        assert "aliases" in graphql(client, aliases)["errors"][0]["message"]
        tokens = "{ products { " + "pageInfo { hasNextPage } " * 700 + "} }"
        assert "token" in graphql(client, tokens)["errors"][0]["message"]
    assert seen == []


def test_the_rest_door_keys_roles_and_positions(
    anonymous: TestClient, client: TestClient, wiring: Wiring,
    bearer: Callable[[Role], dict[str, str]],
) -> None:  # fmt: skip
    query = {"query": "{ products { pageInfo { hasNextPage } } }"}
    no_key = anonymous.post("/v1/graphql", json=query)
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "UNAUTHENTICATED"
    auditor = anonymous.post("/v1/graphql", json=query, headers=bearer(Role.auditor))
    assert auditor.status_code == 403
    wiring.min_position_wait = 0.2
    behind = client.post("/v1/graphql", json=query, headers={"X-Min-Position": str(10**9)})
    assert behind.status_code == 503
    assert behind.json()["error"]["code"] == "PROJECTION_BEHIND"
    assert client.get("/v1/graphql", params=query).status_code in (404, 405, 422)


def test_docs_hold_the_schema_the_code_serves() -> None:
    printed = Path(__file__).parents[2] / "docs" / "graphql.schema"
    assert printed.read_text() == printed_schema(), (
        "docs/graphql.schema is stale: python -c 'from eventkeep.api.graphql import"
        ' printed_schema; print(printed_schema(), end="")\' > docs/graphql.schema'
    )
