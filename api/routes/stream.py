"""`WS /v1/stream`: the global log, catch-up then live, in strictly increasing position.

Catch-up and live are one loop — read the log after the last position sent, send, wait for the
head to move — so there is no hand-over where an event could be missed or sent twice, and a
client resumes after a reconnect with `from_position` = the last position it received.
Each connection reads at its own pace; one that does not take what it is sent within
`SEND_TIMEOUT` seconds is closed with code 4008 rather than holding anything up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from eventkeep.domain.upcasters import upcast
from eventkeep.eventstore.envelope import to_envelope
from eventkeep.eventstore.records import LoggedEvent

router = APIRouter(tags=["stream"])

PAGE = 500
SEND_TIMEOUT = 5.0
CLOSE_UNAUTHENTICATED = 4401
CLOSE_SLOW_CONSUMER = 4008


class LogHead:
    """One poller per process tells every waiting stream when the log grew."""

    def __init__(self, recorder: Any, interval: float = 0.1) -> None:
        self._recorder = recorder
        self._interval = interval
        self._head = 0
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def wait_beyond(self, position: int, timeout: float = 1.0) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
        if self._head > position:
            return
        moved = self._moved
        try:
            await asyncio.wait_for(moved.wait(), timeout)
        except TimeoutError:
            return

    async def _poll(self) -> None:
        while True:
            head = await run_in_threadpool(self._recorder.max_notification_id) or 0
            if head != self._head:
                self._head = head
                self._moved.set()
                self._moved = asyncio.Event()
            await asyncio.sleep(self._interval)


def _matches(event: LoggedEvent, types: set[str], stream_id: UUID | None) -> bool:
    if stream_id is not None and event.originator_id != stream_id:
        return False
    return not types or event.topic in types or event.stream_type in types


def _log_head(websocket: WebSocket) -> LogHead:
    state = websocket.app.state
    if getattr(state, "log_head", None) is None:
        state.log_head = LogHead(state.wiring.shop.recorder)
    return state.log_head


def _api_key(websocket: WebSocket, access_token: str | None) -> str | None:
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return access_token


@router.websocket("/v1/stream")
async def stream(
    websocket: WebSocket,
    types: Annotated[str, Query(description="Comma-separated event or stream types.")] = "",
    stream_id: Annotated[UUID | None, Query(description="Only this stream's events.")] = None,
    from_position: Annotated[int, Query(ge=0, description="Send events after this.")] = 0,
    access_token: Annotated[str | None, Query(description="The API key, if no header.")] = None,
) -> None:
    presented = _api_key(websocket, access_token)
    if presented is None or websocket.app.state.wiring.keys.verify(presented) is None:
        await websocket.close(code=CLOSE_UNAUTHENTICATED, reason="unknown or missing API key")
        return
    await websocket.accept()
    recorder = websocket.app.state.wiring.shop.recorder
    head = _log_head(websocket)
    wanted = {t for t in types.split(",") if t}
    last = from_position
    try:
        while True:
            page: Sequence[LoggedEvent] = await run_in_threadpool(
                recorder.select_notifications, last, PAGE, inclusive_of_start=False
            )
            for event in page:
                if _matches(event, wanted, stream_id):
                    message = orjson.dumps(upcast(to_envelope(event))).decode()
                    await asyncio.wait_for(websocket.send_text(message), SEND_TIMEOUT)
            if page:
                last = page[-1].id
            if len(page) < PAGE:
                await head.wait_beyond(last)
    except TimeoutError:
        await websocket.close(code=CLOSE_SLOW_CONSUMER, reason="slow consumer")
    except WebSocketDisconnect:
        return
