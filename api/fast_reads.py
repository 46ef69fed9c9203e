"""The short path of by-id reads and product searches: answered before FastAPI routes them.

Routing and dependency resolution are most of what a by-id GET costs (a profile of R1 puts
them at about half of the API's CPU per request). For the common case this layer answers on
its own: `GET /v1/users|products|orders/<uuid>`, no query string, no X-Min-Position, an API
key verified moments ago (`ApiKeyStore.recently_verified`, the in-process cache that a
revocation leaves within its 5 s), a role the route admits and an in-memory rate limiter. It
sends the cached bytes with `X-Projection-Position`, as the route would; on a miss it reads
the row (in a thread) and offers it to the cache as the route does, then answers it. Anything
else — a row not found, a customer's token, a first sight of a key, a wait for a position, a
Redis rate limiter, a read replica to choose, a quarantined stream, a refusal — goes on to the
full route, which answers it (and refuses or fills) exactly as before. The outer layers (admission,
metrics, correlation id, security headers, limits) see both paths alike.

Product searches take it too: `GET /v1/products` whose query string the route's own parameters
accept (validated by a model made from the route's signature, `SEARCH_PARAMETERS`), each named
once, with the same key, limiter and header conditions and no read replica; the page is
searched (in a thread) and encoded as the route encodes it. A parameter the route would refuse,
a cursor not made here, anything unusual goes on to the route, which answers it as before.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, get_type_hints

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from eventkeep.api.auth import CUSTOMER_TOKEN_PREFIX, act_as
from eventkeep.api.keys import ApiKey, Role
from eventkeep.api.reads import POSITION_HEADER
from eventkeep.api.routes.products import search_products
from eventkeep.metrics import CACHE_LOOKUPS
from eventkeep.projections.cursors import InvalidCursor


@dataclass(frozen=True)
class ByIdRoute:
    read_model: str
    path: str  # its route's template: the metrics' and the log's route label


# Each admits client and admin keys (and customers, whom the routes themselves answer).
BY_ID = {
    "users": ByIdRoute("users", "/v1/users/{user_id}"),
    "products": ByIdRoute("products", "/v1/products/{product_id}"),
    "orders": ByIdRoute("orders", "/v1/orders/{order_id}"),
}
_PATH = re.compile(
    r"^/v1/(users|products|orders)/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)
SEARCH = ByIdRoute("products", "/v1/products")


def _parameters_of(route: Any) -> type[BaseModel]:
    """A model of a route's query parameters, from its signature (those with a default: the
    others are its dependencies), validating as FastAPI does, and refusing any other name."""
    hints = get_type_hints(route, include_extras=True)
    fields: dict[str, Any] = {
        name: (hints[name], parameter.default)
        for name, parameter in inspect.signature(route).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    config = ConfigDict(extra="forbid")
    return create_model(f"{route.__name__}_parameters", __config__=config, **fields)


SEARCH_PARAMETERS = _parameters_of(search_products)


class FastReads:
    """Innermost middleware: answers the by-id reads' cache hits and misses and the product
    searches it can, passes on the rest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = False
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == SEARCH.path:
                answered = await self._searched(scope, send)
            elif not scope["query_string"] and (match := _PATH.match(path)) is not None:
                answered = await self._by_id(scope, send, match.group(1), match.group(2))
        if not answered:
            await self.app(scope, receive, send)

    async def _by_id(self, scope: Scope, send: Send, segment: str, row_id: str) -> bool:
        route = BY_ID[segment]
        key = _trusted_key(scope)
        # (A customer's key would need the route's ownership check: it takes the route.)
        if key is None:
            return False
        wiring = scope["app"].state.wiring
        name = route.read_model
        queries = wiring.queries
        progress = queries.progress
        model = queries.of(name).model
        if model.cache_kind is None or progress.quarantined_of(name).get(row_id) is not None:
            return False
        # The position first: the answer is at least as new as the position it names.
        position = progress.position_of(name)
        generation = progress.generation_of(name)
        body = await queries.cache.get_async(model.cache_kind, row_id, generation)
        if body is not None:
            CACHE_LOOKUPS.labels("hit").inc()
        elif wiring.replica is not None:
            return False  # the route chooses between the replica and the primary
        else:
            # A miss: the row read (in a thread) and offered to the cache as the route does,
            # without routing, dependencies or a second cache lookup.
            CACHE_LOOKUPS.labels("miss").inc()
            body = await run_in_threadpool(
                queries.of(name).fill_from_read_model, model.cache_kind, row_id, generation
            )
            if body is None:
                return False  # the route answers the 404
        return await _answer(scope, send, key, route, body, position)

    async def _searched(self, scope: Scope, send: Send) -> bool:
        key = _trusted_key(scope)
        wiring = scope["app"].state.wiring
        if key is None or wiring.replica is not None:
            return False
        query = QueryParams(scope["query_string"])
        given = query.multi_items()
        if len(given) != len(query) or any(value == "" for _, value in given):
            return False  # a name given twice, or blank: as the route reads it, or refuses it
        try:
            parameters = SEARCH_PARAMETERS.model_validate(dict(given))
        except ValidationError:
            return False  # the route refuses it, with its code
        products = wiring.queries.of(SEARCH.read_model)
        position = wiring.queries.progress.position_of(SEARCH.read_model)
        try:
            items, next_cursor = await run_in_threadpool(
                lambda: products.search(**parameters.model_dump())
            )
        except InvalidCursor:
            return False  # the route answers the 400
        body = orjson.dumps({"items": items, "next_cursor": next_cursor})
        return await _answer(scope, send, key, SEARCH, body, position)


def _trusted_key(scope: Scope) -> ApiKey | None:
    """The request's client or admin key when the short path may answer for it: no
    X-Min-Position, a key verified moments ago, an in-memory rate limiter."""
    headers = Headers(scope=scope)
    if "x-min-position" in headers:
        return None
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or presented.startswith(CUSTOMER_TOKEN_PREFIX):
        return None
    wiring = scope["app"].state.wiring
    key: ApiKey | None = wiring.keys.recently_verified(presented)
    if key is None or key.role not in (Role.admin, Role.client) or not wiring.limiter.in_memory:
        return None
    return key


async def _answer(
    scope: Scope, send: Send, key: ApiKey, route: ByIdRoute, body: bytes, position: int
) -> bool:
    """Sends `body` as the route would (its headers, its route label), once the rate limiter
    admits the key; False, without sending, when it does not."""
    # A refusal changes no limiter state: the route asks again and answers the 429.
    if scope["app"].state.wiring.limiter.acquire(key.id) is not None:
        return False
    act_as(scope, key)
    scope["route"] = route  # as routing would: RequestMetrics labels by its `path`
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
                (POSITION_HEADER.lower().encode(), str(position).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return True
