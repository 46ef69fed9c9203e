"""What every query shares: the role it needs, read-your-writes, and the position header.

A route reads one read model, through that read model's queries (`UserReads`, …); it never
touches tables. A client that wrote passes the command's `position` as `X-Min-Position`; the
query waits, at most EVENTKEEP_MIN_POSITION_WAIT seconds, for THE READ MODEL IT READS to reach
it, and answers 503 PROJECTION_BEHIND (with Retry-After) rather than an answer that misses its
own write. Every answer says in `X-Projection-Position` how far that read model was when it
was read. With a read replica (EVENTKEEP_POSTGRES_REPLICA_URL) the query reads the replica
once the replica's own copy of the read model reached X-Min-Position, else the primary
(`projections/replica.py`).
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the closure's annotations.

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Header, Request, Response

from eventkeep.api.auth import requires
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import ApiKey, Role
from eventkeep.projections.cursors import InvalidCursor
from eventkeep.projections.daily_sales import SalesQueries
from eventkeep.projections.orders import OrderQueries
from eventkeep.projections.products import ProductQueries
from eventkeep.projections.queries import Queries
from eventkeep.projections.readmodel import MIN_POSITION
from eventkeep.projections.users import UserQueries

POSITION_HEADER = "X-Projection-Position"


def reader(role: Role, name: str | None, *others: Role) -> Callable[..., Awaitable[Any]]:
    """The queries of the read model `name` (None: all of them), once it reached the
    request's X-Min-Position; for keys of `role` (or one of `others`) and admin keys."""

    async def read_side(
        request: Request,
        response: Response,
        _: Annotated[ApiKey, Depends(requires(role, *others))],
        # `int`, not `int | None`: the header is absent (0: no wait) or a number, never "null"
        # (the OpenAPI description says so, and schemathesis holds the API to it).
        x_min_position: Annotated[
            int,
            Header(
                ge=0,
                le=2**63 - 1,
                description="Answer only once the read model read includes this position.",
            ),
        ] = 0,
    ) -> Any:
        wiring = request.app.state.wiring
        queries: Queries = wiring.queries
        wanted = x_min_position
        wait = wiring.min_position_wait if wanted else 0
        if wiring.replica is not None:  # the replica once it has `wanted`, else the primary
            queries, reached = await wiring.replica.choose(wanted, wait, name)
        else:
            reached = await queries.reach(wanted, wait, name)
        if reached < wanted:
            raise ApiError(
                "PROJECTION_BEHIND",
                f"{f'The {name} read model has' if name else 'The read models have'} not"
                " reached X-Min-Position yet; retry shortly.",
                {"min_position": wanted, "projection_position": reached, "projection": name},
                headers={"Retry-After": "1", POSITION_HEADER: str(reached)},
            )
        response.headers[POSITION_HEADER] = str(reached)
        MIN_POSITION.set(wanted)  # by-id reads answer no cached row older than this
        return queries if name is None else queries.of(name)

    return read_side


UserReads = Annotated[UserQueries, Depends(reader(Role.client, "users"))]
# Products are readable with a customer's token too.
ProductReads = Annotated[ProductQueries, Depends(reader(Role.client, "products", Role.customer))]
OrderReads = Annotated[OrderQueries, Depends(reader(Role.client, "orders"))]
# Routes that answer a customer their own user or orders (api/accounts.py `own`).
OwnUserReads = Annotated[UserQueries, Depends(reader(Role.client, "users", Role.customer))]
OwnOrderReads = Annotated[OrderQueries, Depends(reader(Role.client, "orders", Role.customer))]
SalesReads = Annotated[SalesQueries, Depends(reader(Role.analyst, "daily_sales"))]
AllReads = Annotated[Queries, Depends(reader(Role.analyst, None))]


Found = TypeVar("Found", dict, bytes)


def found(row: Found | None, what: str, row_id: object) -> Found:
    if row is None:
        raise ApiError("NOT_FOUND", f"No {what} {row_id}.", {"id": str(row_id)})
    return row


# The OpenAPI description of a by-id answer sent as `encoded` bytes (no model runs on it).
ByIdAnswer = dict[str, Any]


def encoded(body: bytes, request_response: Response) -> Response:
    """A by-id answer: the cache's (or the read model's) encoded row as it is, with the headers
    the request's dependencies set (X-Projection-Position). FastAPI neither validates nor
    re-encodes a Response a route returns, nor adds those headers to it."""
    answer = Response(body, media_type="application/json")
    answer.headers.raw.extend(request_response.headers.raw)
    return answer


# The OpenAPI description of a list answer sent as `page` bytes: `{"items", "next_cursor"}`.
PageAnswer = dict[str, Any]


def page(read: Callable[[], tuple[list[dict], str | None]], request_response: Response) -> Response:
    """A list answer, `{"items", "next_cursor"}`, encoded once as it goes on the wire (no
    model validates or re-encodes its rows), with the headers the request's dependencies set;
    a cursor not made here is a 400."""
    try:
        items, next_cursor = read()
    except InvalidCursor as error:
        raise ApiError("INVALID_CURSOR", str(error)) from None
    return encoded(orjson.dumps({"items": items, "next_cursor": next_cursor}), request_response)
