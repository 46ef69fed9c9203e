"""Every request carries a correlation id: the client's `X-Correlation-ID` or a new random
UUID (from `random`, not the OS: an id to follow, not a secret, and no system call per request).

It is echoed on every answer, errors included, and stored in the metadata of the events the
request records, so that one id follows a command from the client to the read models. A
client's id is taken only when it is 1 to 128 of `A-Z a-z 0-9 . _ : -`; any other (too long,
other characters) is replaced by a new one, never echoed or stored.
"""

from __future__ import annotations

import random
import re
from uuid import UUID

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Correlation-ID"
MAX_LENGTH = 128
_ACCEPTED = re.compile(r"^[A-Za-z0-9._:-]+$")
_NAME = HEADER.lower().encode()


def accepted(value: str | None) -> str | None:
    """The client's id when it is one the API keeps, else None."""
    if value is None or len(value) > MAX_LENGTH or not _ACCEPTED.match(value):
        return None
    return value


class CorrelationId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = accepted(Headers(scope=scope).get(HEADER)) or str(
            UUID(int=random.getrandbits(128), version=4)
        )
        scope.setdefault("state", {})["correlation_id"] = correlation_id

        echoed = (_NAME, correlation_id.encode("latin-1"))

        async def echo(message: Message) -> None:
            if message["type"] == "http.response.start":
                given = message.get("headers", ())
                if any(name == _NAME for name, _ in given):
                    MutableHeaders(scope=message)[HEADER] = correlation_id
                else:  # as MutableHeaders would: appended, without its pass per header
                    message["headers"] = [*given, echoed]
            await send(message)

        # Every log line written while the request is handled carries its id (eventkeep.logs).
        bound = structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        try:
            await self.app(scope, receive, echo)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
