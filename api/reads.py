"""What every query shares: the role it needs, read-your-writes, and the position header.

A client that wrote passes the command's `position` as `X-Min-Position`; the query waits, at
most EVENTKEEP_MIN_POSITION_WAIT seconds, for the read models to reach it, and answers 503
PROJECTION_BEHIND (with Retry-After) rather than an answer that misses its own write. Every
answer says in `X-Projection-Position` how far the read models were when it was read.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the closure's annotations.

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Response

from eventkeep.api.auth import requires
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import ApiKey, Role
from eventkeep.projections.queries import Queries
from eventkeep.projections.readmodels import InvalidCursor

POSITION_HEADER = "X-Projection-Position"


def reader(role: Role) -> Callable[..., Awaitable[Queries]]:
    async def read_side(
        request: Request,
        response: Response,
        _: Annotated[ApiKey, Depends(requires(role))],
        # `int`, not `int | None`: the header is absent or a number, never "null".
        x_min_position: Annotated[
            int,  # noqa: RUF013
            Header(
                ge=0,
                le=2**63 - 1,
                description="Answer only once the read models include this position.",
            ),
        ] = None,
    ) -> Queries:
        wiring = request.app.state.wiring
        queries: Queries = wiring.queries
        wanted = x_min_position or 0
        reached = await queries.reach(wanted, wiring.min_position_wait if wanted else 0)
        if reached < wanted:
            raise ApiError(
                "PROJECTION_BEHIND",
                "The read models have not reached X-Min-Position yet; retry shortly.",
                {"min_position": wanted, "projection_position": reached},
                headers={"Retry-After": "1", POSITION_HEADER: str(reached)},
            )
        response.headers[POSITION_HEADER] = str(reached)
        return queries

    return read_side


ClientReads = Annotated[Queries, Depends(reader(Role.client))]
AnalystReads = Annotated[Queries, Depends(reader(Role.analyst))]


def found(row: dict | None, what: str, row_id: object) -> dict:
    if row is None:
        raise ApiError("NOT_FOUND", f"No {what} {row_id}.", {"id": str(row_id)})
    return row


def page(read: Callable[[], tuple[list[dict], str | None]]) -> dict:
    """A list answer, `{"items", "next_cursor"}`; a cursor not made here is a 400."""
    try:
        items, next_cursor = read()
    except InvalidCursor as error:
        raise ApiError("INVALID_CURSOR", str(error)) from None
    return {"items": items, "next_cursor": next_cursor}
