"""The by-id reads' short path: a cache hit answered before FastAPI routes the request.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from eventkeep.api.auth import CUSTOMER_TOKEN_PREFIX, act_as
from eventkeep.api.keys import Role
from eventkeep.api.reads import POSITION_HEADER
from eventkeep.metrics import CACHE_LOOKUPS


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


class FastByIdReads:
    """Innermost middleware: answers the cache hits of by-id reads, passes on the rest."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope["query_string"]
            and (match := _PATH.match(scope["path"])) is not None
            and await self._answered(scope, send, match.group(1), match.group(2))
        ):
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, send: Send, segment: str, row_id: str) -> bool:
        headers = Headers(scope=scope)
        if "x-min-position" in headers:
            return False
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or presented.startswith(CUSTOMER_TOKEN_PREFIX):
            return False
        wiring = scope["app"].state.wiring
        key = wiring.keys.recently_verified(presented)
        route = BY_ID[segment]
        name = route.read_model
        # (A customer's key would need the route's ownership check: it takes the route.)
        if key is None or key.role not in (Role.admin, Role.client):
            return False
        limiter = wiring.limiter
        if not limiter.in_memory:
            return False
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
        # A refusal changes no limiter state: the route asks again and answers the 429.
        if limiter.acquire(key.id) is not None:
            return False
        act_as(scope, key)
        scope["route"] = route  # as routing would: RequestMetrics labels by its `path`
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (POSITION_HEADER.lower().encode(), str(position).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return True
