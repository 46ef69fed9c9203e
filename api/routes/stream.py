"""`WS /v1/stream`: the global log, catch-up then live, in strictly increasing position.

Catch-up and live are one loop — the log follower reads after the last position sent, and waits
for a commit (or its poll interval) at the end — so there is no hand-over where an event could
be missed or sent twice, and a client resumes after a reconnect with `from_position` = the last
position it received.
Each connection reads at its own pace; one that does not take what it is sent within
`SEND_TIMEOUT` seconds is closed with code 4008 rather than holding anything up.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.log_follower import LogFollower
from eventkeep.eventstore.records import LoggedEvent

router = APIRouter(tags=["stream"])

PAGE = 500
SEND_TIMEOUT = 5.0
POLL_INTERVAL = 1.0  # the longest a stream waits when no commit woke it
CLOSE_UNAUTHENTICATED = 4401
CLOSE_SLOW_CONSUMER = 4008


def _matches(event: LoggedEvent, types: set[str], stream_id: UUID | None) -> bool:
    if stream_id is not None and event.originator_id != stream_id:
        return False
    return not types or event.topic in types or event.stream_type in types


SUBPROTOCOL = "eventkeep"
KEY_SUBPROTOCOL_PREFIX = "bearer."


def _api_key(websocket: WebSocket) -> str | None:
    """The key from `Authorization: Bearer <key>`, or from a `bearer.<key>` subprotocol (what
    a browser can send); never from the URL, which servers and proxies write to their logs."""
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(KEY_SUBPROTOCOL_PREFIX):
            return offered.removeprefix(KEY_SUBPROTOCOL_PREFIX)
    return None


@router.websocket("/v1/stream")
async def stream(
    websocket: WebSocket,
    types: Annotated[str, Query(description="Comma-separated event or stream types.")] = "",
    stream_id: Annotated[UUID | None, Query(description="Only this stream's events.")] = None,
    from_position: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Send events after this.")
    ] = 0,
    access_token: Annotated[
        str | None, Query(description="Refused: a key in the URL ends up in logs.")
    ] = None,
) -> None:
    if access_token is not None:
        await websocket.close(
            code=CLOSE_UNAUTHENTICATED,
            reason="send the key as Authorization: Bearer or subprotocol bearer.<key>",
        )
        return
    presented = _api_key(websocket)
    if presented is None or websocket.app.state.wiring.keys.verify(presented) is None:
        await websocket.close(code=CLOSE_UNAUTHENTICATED, reason="unknown or missing API key")
        return
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    follower = LogFollower(
        websocket.app.state.wiring.shop.recorder,
        from_position,
        batch_size=PAGE,
        poll_interval=POLL_INTERVAL,
    )
    wanted = {t for t in types.split(",") if t}
    try:
        async for page in follower.batches_async():
            for event in page:
                if _matches(event, wanted, stream_id):
                    message = orjson.dumps(upcast(to_envelope(event))).decode()
                    await asyncio.wait_for(websocket.send_text(message), SEND_TIMEOUT)
            follower.advance_to(page[-1].id)
    except TimeoutError:
        await websocket.close(code=CLOSE_SLOW_CONSUMER, reason="slow consumer")
    except WebSocketDisconnect:
        return
