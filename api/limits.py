"""Limits checked at the door, before any work is done for a request.

* The request line and headers together are at most `max_header_bytes` (431).
* A body is at most `max_body_bytes` (413): a larger `Content-Length` is refused before a byte
  is read, and a body without one (chunked) is counted as it streams in and cut off at the
  limit.
* A query string holds no control characters (400): no NUL reaches a database; and only the
  parameters its route declares (422 naming the others): a misspelt filter is never ignored.

The server (uvicorn) has limits of its own on the size of what it buffers; these are the ones
the API answers in its own error shape, whichever HTTP implementation runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi.dependencies.models import Dependant
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventkeep.api.errors import ApiError, error_response

MAX_BODY_BYTES = 1_048_576
MAX_HEADER_BYTES = 16_384


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = MAX_BODY_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits a Settings object sets (its defaults where it has none)."""
        return cls(
            max_body_bytes=getattr(settings, "max_body_bytes", MAX_BODY_BYTES),
            max_header_bytes=getattr(settings, "max_header_bytes", MAX_HEADER_BYTES),
        )


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            "PAYLOAD_TOO_LARGE",
            f"The request body is larger than {limit} bytes.",
            {"max_body_bytes": limit},
        )


def header_bytes(scope: Scope) -> int:
    """The size of the request line and headers as they came on the wire (near enough)."""
    line = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def _has_control_character(query: bytes) -> bool:
    decoded = unquote_to_bytes(query.replace(b"+", b" "))
    return any(byte < 0x20 or byte == 0x7F for byte in decoded)


class RequestLimits:
    def __init__(self, app: ASGIApp, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": refusal.message})
                return
            await error_response(refusal.code, refusal.message, refusal.details)(
                scope, receive, send
            )
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    def _refusal(self, scope: Scope) -> ApiError | None:
        limit = self.limits.max_header_bytes
        if header_bytes(scope) > limit:
            return ApiError(
                "HEADERS_TOO_LARGE",
                f"The request line and headers are larger than {limit} bytes.",
                {"max_header_bytes": limit},
            )
        if _has_control_character(scope["query_string"]):
            return ApiError("MALFORMED_REQUEST", "The query string holds a control character.", {})
        if scope["type"] != "http":
            return None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    return ApiError("MALFORMED_REQUEST", "Content-Length is not a number.", {})
                if int(value) > self.limits.max_body_bytes:
                    return BodyTooLarge(self.limits.max_body_bytes)
        return None

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.max_body_bytes
        received = 0
        started = answered = False

        async def counting() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answered here, at once: the app sees an error from its read and
                    # whatever it answers to that is dropped.
                    error = BodyTooLarge(limit)
                    if not started and not answered:
                        answered = True
                        await error_response(error.code, error.message, error.details)(
                            scope, receive, send
                        )
                    raise error
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, watch)
        except BodyTooLarge:
            if not answered:
                raise


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query_parameters(connection: HTTPConnection) -> None:
    """An app-wide dependency: a query parameter the route does not declare is refused."""
    route = connection.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if route is None or dependant is None:
        return
    declared = getattr(route, "declared_query_parameters", None)
    if declared is None:  # worked out once per route, kept on it
        declared = frozenset(_query_names(dependant))
        route.declared_query_parameters = declared
    unknown = sorted(set(connection.query_params) - declared)
    if unknown:
        raise ApiError(
            "VALIDATION_FAILED",
            "The request is not valid.",
            {
                "fields": [
                    {"field": f"query.{name}", "message": "Unknown query parameter"}
                    for name in unknown
                ]
            },
        )
