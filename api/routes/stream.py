"""`WS /v1/stream`: the global log, catch-up then live, in strictly increasing position.

Catch-up and live are one loop — the log follower reads after the last position sent, and waits
for a commit (or its poll interval) at the end — so there is no hand-over where an event could
be missed or sent twice, and a client resumes after a reconnect with `from_position` = the last
position it received.
Each connection reads at its own pace; one that does not take what it is sent within
`SEND_TIMEOUT` seconds is closed with code 4008 rather than holding anything up.

Events carry personal data, so only the roles that may read it (client, auditor, admin) are
admitted; an analyst key or a customer's token is refused with 4403. Three tasks run per
connection and the first to end ends the others: the sender (the follower's loop), a receiver
that notices a disconnect at once (a filter that never matches would otherwise poll forever),
and a watcher that asks the key store every `REVOCATION_CHECK` seconds whether the key is still
active (a revoked key's streams close with 4401). A key holds at most
`Wiring.max_streams_per_key` open streams in a process; one more is refused with 4429.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable
from typing import Annotated
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from eventkeep.api.auth import caller, key_is_active
from eventkeep.api.keys import ApiKey, Role
from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.log_follower import LogFollower
from eventkeep.eventstore.records import LoggedEvent

router = APIRouter(tags=["stream"])

PAGE = 500
SEND_TIMEOUT = 5.0
POLL_INTERVAL = 1.0  # the longest a stream waits when no commit woke it
REVOCATION_CHECK = 2.0  # seconds between asking the key store whether the key still stands
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
CLOSE_SLOW_CONSUMER = 4008
# The roles that may read personal data (the users and orders queries, the audit history).
READERS = frozenset({Role.client, Role.auditor, Role.admin})


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
    wiring = websocket.app.state.wiring
    presented = _api_key(websocket)
    key = None if presented is None else await caller(wiring, presented)
    if key is None:
        await websocket.close(code=CLOSE_UNAUTHENTICATED, reason="unknown or missing API key")
        return
    if key.role not in READERS:
        await websocket.close(
            code=CLOSE_FORBIDDEN, reason="the stream needs the client, auditor or admin role"
        )
        return
    open_streams = _open_streams(websocket)
    if open_streams[key.id] >= wiring.max_streams_per_key:
        await websocket.close(code=CLOSE_TOO_MANY, reason="too many open streams for this key")
        return
    open_streams[key.id] += 1
    try:
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        follower = LogFollower(
            wiring.shop.recorder, from_position, batch_size=PAGE, poll_interval=POLL_INTERVAL
        )
        wanted = {t for t in types.split(",") if t}
        try:
            await _first_of(
                _send(websocket, follower, wanted, stream_id),
                _until_disconnected(websocket),
                _until_revoked(websocket, wiring, key),
            )
        finally:
            follower.stop()
    finally:
        open_streams[key.id] -= 1
        if not open_streams[key.id]:
            del open_streams[key.id]


def _open_streams(websocket: WebSocket) -> Counter[str]:
    """This process's open streams by key id."""
    state = websocket.app.state
    if not hasattr(state, "open_streams"):
        state.open_streams = Counter()
    counts: Counter[str] = state.open_streams
    return counts


async def _first_of(*steps: Awaitable[None]) -> None:
    """Runs the steps together until one ends; cancels the others and waits for them."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await task
    for task in done:
        task.result()


async def _send(
    websocket: WebSocket, follower: LogFollower, wanted: set[str], stream_id: UUID | None
) -> None:
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


async def _until_disconnected(websocket: WebSocket) -> None:
    """Returns when the client goes away; what it sends is ignored."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _until_revoked(websocket: WebSocket, wiring: object, key: ApiKey) -> None:
    """Returns, having closed the stream, once the key is no longer active."""
    while True:
        await asyncio.sleep(REVOCATION_CHECK)
        if not await key_is_active(wiring, key):
            await websocket.close(code=CLOSE_UNAUTHENTICATED, reason="the API key was revoked")
            return
