"""By-id queries answer the cache's encoded bytes as they are (no model, no re-encoding), with
their position header, in both modes, on a short path before routing (api/fast_reads.py) that
still refuses a revoked key; product searches take it too and answer as the route does, which
still answers (and refuses) every search the short path does not; and erasure reaches those
bytes as it reaches the rows: once the read model and its cache writes include the erasure,
no cached answer holds the user's personal data. The projector writes each changed row's
answer to the cache after its commit, the bytes a query would have encoded from the row, so
the first read after a change is a hit, with no query of the read model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eventkeep.api.app import create_app
from eventkeep.api.bootstrap import Wiring, wire
from eventkeep.api.fast_reads import BY_ID, SEARCH
from eventkeep.api.keys import Role
from eventkeep.api.ratelimit import LocalLimiter
from eventkeep.api.routes import products as product_routes
from eventkeep.projections.cache import LocalCache
from eventkeep.projections.near_cache import NearCache
from eventkeep.projections.readmodel import ReadModel, ReadModelQueries
from tests.api.shopping import USER, answer, create_product, place_order, register

pytestmark = pytest.mark.usefixtures("projected")

DEADLINE = 30  # s: events reach the read models through Kafka on a loaded machine


def cached(wiring: Wiring, kind: str, name: str, row_id: str) -> bytes | None:
    generation = wiring.queries.progress.generation_of(name)
    return asyncio.run(wiring.queries.cache.get_async(kind, row_id, generation))


def evict(wiring: Wiring, kind: str, name: str, row_id: str) -> None:
    """Drops an entry as an expiry or the cache's own eviction would: the next read misses."""
    cache = wiring.queries.cache
    generation = wiring.queries.progress.generation_of(name)
    if isinstance(cache, NearCache):
        cache.redis._redis.delete(cache.redis.key(generation, kind, row_id))
    else:
        assert isinstance(cache, LocalCache)
        cache._entries.pop((generation, kind, row_id), None)


def poll(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (found := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return found


def test_a_cache_hit_answers_the_cached_bytes_as_they_are(
    client: TestClient, wiring: Wiring
) -> None:
    product = create_product(client)
    path = f"/v1/products/{product['id']}"
    headers = {"X-Min-Position": str(product["position"])}
    assert client.get(path, headers=headers).status_code == 200
    generation = wiring.queries.progress.generation_of("products")
    # Bytes no JSON encoder would write (a space after each separator), at a newer version.
    planted = f'{{"id": "{product["id"]}", "version": 99, "planted": true}}'.encode()
    wiring.queries.cache.fill("product", product["id"], 99, planted, generation)
    hit = poll(lambda: (r := client.get(path)).content == planted and r, "the planted entry")
    assert hit.headers["content-type"] == "application/json"
    assert int(hit.headers["X-Projection-Position"]) >= product["position"]


def test_erasure_leaves_the_cached_answers(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]]
) -> None:
    user = register(client)
    path = f"/v1/users/{user['id']}"
    email = USER["email"].encode()
    assert client.get(path, headers={"X-Min-Position": str(user["position"])}).status_code == 200
    # Reads without X-Min-Position go through the cache and fill it with the answer.
    poll(
        lambda: (
            client.get(path).status_code == 200
            and email in (cached(wiring, "user", "users", user["id"]) or b"")
        ),
        "the user's answer in the cache",
    )
    erased = answer(client.delete(f"{path}/personal-data", headers=bearer(Role.admin)))
    progress = wiring.queries.progress
    poll(lambda: progress.cache_position_of("users") >= erased["position"], "the cache writes")
    # The projector wrote the erased row's answer over the one before: no read refilled it.
    erased_answer = orjson.loads(cached(wiring, "user", "users", user["id"]) or b"null")
    assert erased_answer["email"] is None and erased_answer["version"] == erased["version"]
    shown = client.get(path).json()  # through the cache again: refilled with the erased row
    assert (shown["email"], shown["first_name"], shown["last_name"]) == (None, None, None)
    assert email not in (cached(wiring, "user", "users", user["id"]) or b"")


@pytest.mark.parametrize("wiring", ["distributed"], indirect=True)  # one process if embedded
def test_an_erased_user_is_served_from_no_workers_near_copy(
    client: TestClient, wiring: Wiring, bearer: Callable[[Role], dict[str, str]]
) -> None:
    """Each API worker keeps Redis's answers near (projections/near_cache.py); once a worker
    shows the erasure's position as its cache position, neither its answer nor its near copy
    holds the erased data, whichever worker the erasure went through."""
    user = register(client)
    path = f"/v1/users/{user['id']}"
    email = USER["email"].encode()
    assert client.get(path, headers={"X-Min-Position": str(user["position"])}).status_code == 200
    assert wiring.built is not None
    other = wire(wiring.built.settings)  # a second worker of the same deployment
    try:
        with TestClient(create_app(other), headers=bearer(Role.admin)) as second:
            workers = ((client, wiring), (second, other))
            for reader, worker in workers:
                cache = worker.queries.cache
                assert isinstance(cache, NearCache)
                generation = worker.queries.progress.generation_of("users")
                poll(
                    lambda r=reader, c=cache, g=generation: (
                        email in r.get(path).content
                        and email in (c.near("user", user["id"], g) or b"")
                    ),
                    "the user's answer kept near",
                )
            erased = answer(client.delete(f"{path}/personal-data", headers=bearer(Role.admin)))
            for reader, worker in workers:
                progress = worker.queries.progress
                poll(lambda p=progress: p.cache_position_of("users") >= erased["position"], "it")
                generation = progress.generation_of("users")
                cache = worker.queries.cache
                assert isinstance(cache, NearCache)
                assert email not in (cache.near("user", user["id"], generation) or b"")
                assert email not in reader.get(path).content
    finally:
        other.close()


def test_a_projected_change_is_read_from_the_cache_with_no_read_model_query(
    client: TestClient, wiring: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New rows and changed ones (the order's reservation changes the product): once they
    are projected, their answers are in the cache with no read having filled it, byte for
    byte what a read of the row encodes, and each GET is a hit that never reads the read
    model."""
    user = register(client)
    product = create_product(client)
    order = answer(place_order(client, user["id"], product["id"]), 201)
    progress = wiring.queries.progress
    newest = max(user["position"], product["position"], order["position"])
    rows = {"users": ("user", user["id"]), "products": ("product", product["id"])}
    rows["orders"] = ("order", order["id"])
    poll(lambda: all(progress.position_of(name) >= newest for name in rows), "the projector")
    expected = {}
    for name, (_, row_id) in rows.items():
        read = wiring.queries.of(name).model.read_answer(row_id)
        assert read is not None
        expected[name] = read[1]

    def no_query(model: ReadModel, row_id: str) -> None:
        raise AssertionError(f"{model.name} {row_id} read from the read model, not the cache")

    monkeypatch.setattr(ReadModel, "read_answer", no_query)
    for name, (kind, row_id) in rows.items():
        # Written by the projector after its commit (nothing here read these rows before).
        poll(
            lambda k=kind, n=name, i=row_id: cached(wiring, k, n, i) == expected[n],
            f"the {kind}'s answer",
        )
        hit = client.get(f"/v1/{name}/{row_id}")
        assert (hit.status_code, hit.content) == (200, expected[name])


def test_a_revoked_key_is_refused_even_for_a_cached_answer(
    app: FastAPI, wiring: Wiring, bearer: Callable[[Role], dict[str, str]]
) -> None:
    """The short path trusts only keys the store vouched for within the key cache's TTL; a
    revocation in this process empties that cache at once (another's, within its TTL)."""
    issued = wiring.keys.create(Role.client, "soon-revoked")
    headers = {"Authorization": f"Bearer {issued.secret_key}"}
    with TestClient(app, headers=bearer(Role.client)) as writer:
        product = create_product(writer)
    with TestClient(app, headers=headers) as client:
        path = f"/v1/products/{product['id']}"
        wanted = {"X-Min-Position": str(product["position"])}
        assert client.get(path, headers=wanted).status_code == 200
        # Reads without X-Min-Position fill the cache; then they are hits, on the short path.
        poll(
            lambda: (
                client.get(path).status_code == 200
                and cached(wiring, "product", "products", product["id"])
            ),
            "the cached answer",
        )
        assert client.get(path).status_code == 200
        wiring.keys.revoke(issued.key.id)
        refused = client.get(path)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "UNAUTHENTICATED"


def test_a_miss_is_read_filled_and_answered_on_the_short_path(
    wiring: Wiring, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A by-id miss costs the read model's row and the cache's fill, not FastAPI's routing,
    dependencies and a second cache lookup: the short path reads, fills and answers it."""
    # The short path's limiter is in memory (Redis's is asked off the event loop, by the route).
    monkeypatch.setattr(wiring, "limiter", LocalLimiter(rate=1000, burst=1000))
    product = create_product(client)
    poll(lambda: wiring.queries.position("products") >= product["position"], "the read model")
    poll(lambda: cached(wiring, "product", "products", product["id"]), "the projector's answer")
    evict(wiring, "product", "products", product["id"])
    poll(lambda: cached(wiring, "product", "products", product["id"]) is None, "the eviction")
    assert client.get("/v1/products", params={"limit": 1}).status_code == 200  # key verified
    products = wiring.queries.of("products")
    routed: list[str] = []  # the route's read, spied on

    async def route_read(row_id: str) -> bytes | None:
        routed.append(row_id)
        return await ReadModelQueries.encoded_async(products, row_id)

    monkeypatch.setattr(products, "encoded_async", route_read)
    answered = client.get(f"/v1/products/{product['id']}")
    assert answered.status_code == 200
    assert answered.json()["id"] == product["id"]
    assert int(answered.headers["X-Projection-Position"]) >= product["position"]
    assert routed == []  # answered before routing
    assert cached(wiring, "product", "products", product["id"]) == answered.content


def test_the_short_path_labels_requests_with_the_routes_templates(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for route in (*BY_ID.values(), SEARCH):
        assert "get" in paths[route.path], route


SEARCHES: list[Any] = [
    {},
    {"q": "lamp"},
    {"q": "desk lamp", "category": "lighting", "sort": "-price", "limit": "2"},
    {"category": "lighting", "min_price": "1.00", "max_price": "500.00", "sort": "price"},
    {"in_stock": "true", "status": "active", "sort": "newest", "limit": "1"},
    {"q": "zebra", "in_stock": "false"},
]
REFUSED: list[Any] = [
    {"limit": "0"},
    {"limit": "101"},
    {"limit": "many"},
    {"sort": "cheapest"},
    {"min_price": "1.0"},
    {"status": "gone"},
    {"in_stock": "perhaps"},
    {"q": "x" * 201},
    {"cursor": "bm90IGEgY3Vyc29y"},
    {"colour": "red"},
    {"category": ""},
]
# Answered by the route as it reads them (the last value of a name given twice; a blank word).
ODD: list[Any] = [[("q", "lamp"), ("q", "desk")], {"q": ""}]


def test_a_search_is_answered_on_the_short_path_as_the_route_answers_it(
    wiring: Wiring, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same status, bytes and position as the route's answer (X-Min-Position takes a
    request to the route), pages followed by their cursors included; the route is not run for
    a search the short path answers; every search it refuses, it refuses as before, and one it
    does not read as the route does goes to the route."""
    # The short path's limiter is in memory (Redis's is asked off the event loop, by the route).
    monkeypatch.setattr(wiring, "limiter", LocalLimiter(rate=1000, burst=1000))
    made = [
        create_product(client, sku=f"L{i}", name=f"Desk lamp {i}", category="lighting")
        for i in range(4)
    ] + [create_product(client, sku="C1", name="Chair", category="furniture", stock=0)]
    last = max(p["position"] for p in made)
    poll(lambda: wiring.queries.position("products") >= last, "the read model")
    routed: list[Any] = []  # the route's answers, spied on

    def route_page(*args: Any) -> Any:
        routed.append(args)
        return page(*args)

    page = product_routes.page
    monkeypatch.setattr(product_routes, "page", route_page)
    assert client.get("/v1/products", params={"limit": 1}).status_code == 200  # key verified
    by_route = {"X-Min-Position": "0"}
    for params in SEARCHES:
        cursor = None
        while True:
            query = params if cursor is None else {**params, "cursor": cursor}
            routed.clear()
            fast = client.get("/v1/products", params=query)
            assert routed == [], query  # answered before routing
            full = client.get("/v1/products", params=query, headers=by_route)
            assert routed, query
            assert (fast.status_code, fast.content) == (200, full.content), query
            for header in ("content-type", "content-length", "x-projection-position"):
                assert fast.headers[header] == full.headers[header], (query, header)
            if (cursor := fast.json()["next_cursor"]) is None:
                break
    for params in REFUSED:
        fast = client.get("/v1/products", params=params)
        full = client.get("/v1/products", params=params, headers=by_route)
        assert fast.status_code == full.status_code and 400 <= fast.status_code < 500, params
        assert fast.json()["error"] == full.json()["error"], params
    for params in ODD:
        routed.clear()
        fast = client.get("/v1/products", params=params)
        assert routed, params  # not the short path's to answer
        full = client.get("/v1/products", params=params, headers=by_route)
        assert (fast.status_code, fast.content) == (full.status_code, full.content), params
