"""Every error answer has one shape, `{"error": {"code", "message", "details"}}`, and its
HTTP status comes from its code through STATUS_BY_CODE, the one table of that mapping."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from http import HTTPStatus
from typing import Any, cast

import psycopg
from eventsourcing.persistence import OperationalError as StoreOperationalError
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from eventkeep.domain.errors import DomainError
from eventkeep.eventstore.group_commit import CommitOutcomeUnknown
from eventkeep.projections.readmodel import StreamQuarantined

logger = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, int] = {
    "MALFORMED_REQUEST": 400,
    "INVALID_CURSOR": 400,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "VERSION_CONFLICT": 409,
    "EMAIL_TAKEN": 409,
    "IDEMPOTENCY_KEY_REUSED": 409,
    "INVALID_STATE_TRANSITION": 409,
    "STOCK_INSUFFICIENT": 409,
    "USER_ALREADY_ACTIVE": 409,
    "USER_NOT_ACTIVE": 409,
    "PRODUCT_DISCONTINUED": 409,
    "PERSONAL_DATA_ERASED": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "VALIDATION_FAILED": 422,
    "RATE_LIMITED": 429,
    "HEADERS_TOO_LARGE": 431,
    "INTERNAL": 500,
    "STORE_UNAVAILABLE": 503,
    "COMMIT_OUTCOME_UNKNOWN": 503,
    "PROJECTION_BEHIND": 503,
    "STREAM_QUARANTINED": 503,
}
# A domain error whose code is not above broke a business rule the request could not express.
DOMAIN_RULE_STATUS = 422

# psycopg_pool.PoolTimeout is a psycopg.OperationalError.
STORE_UNAVAILABLE_ERRORS = (psycopg.OperationalError, StoreOperationalError)


class ApiError(Exception):
    """An error the API itself decides (auth, headers); its code must be in STATUS_BY_CODE."""

    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers


def error_response(
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(
        jsonable_encoder(body),
        status_code=status or STATUS_BY_CODE.get(code, DOMAIN_RULE_STATUS),
        headers=headers,
    )


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.code, exc.message, exc.details, headers=exc.headers)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return error_response(exc.code, exc.message, exc.details)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error["type"] == "json_invalid" for error in errors):
        return error_response("MALFORMED_REQUEST", "The request body is not valid JSON.")
    if any(error["loc"] == ("body",) and isinstance(error.get("input"), bytes) for error in errors):
        # FastAPI reads a body as JSON only when it is labelled so; anything else stays bytes.
        return error_response(
            "MALFORMED_REQUEST", "Send the body as JSON, with Content-Type: application/json."
        )
    fields = [
        {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
        for error in errors
    ]
    return error_response("VALIDATION_FAILED", "The request is not valid.", {"fields": fields})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # Raised by routing itself: unknown paths, wrong methods.
    assert isinstance(exc, HTTPException)
    status = HTTPStatus(exc.status_code)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(
        status, status.phrase.upper().replace(" ", "_")
    )
    headers = dict(exc.headers or {})
    if status == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(code, status.phrase, status=status, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _retry_later(
    code: str, message: str, *, level: int, what: str
) -> Callable[[HTTPConnection, Exception], Awaitable[Response | None]]:
    """A handler answering 503 `code` with Retry-After (a WebSocket is closed with 1011)."""

    async def handle(connection: HTTPConnection, exc: Exception) -> Response | None:
        if connection.scope["type"] == "websocket":
            await _close_websocket(connection, exc)
            return None
        logger.log(
            level, "%s on %s %s: %s", what, connection.scope["method"], connection.url.path, exc
        )
        return error_response(code, message, headers={"Retry-After": "1"})

    return handle


_store_unavailable = _retry_later(
    "STORE_UNAVAILABLE",
    "The event store cannot be reached; retry later.",
    level=logging.WARNING,
    what="event store unavailable",
)
_commit_outcome_unknown = _retry_later(
    "COMMIT_OUTCOME_UNKNOWN",
    "The connection to the event store failed while this change was being committed and"
    " whether it was stored could not be found out. Retry with the same Idempotency-Key"
    " (safe), or read the resource before repeating the request without one.",
    level=logging.ERROR,
    what="commit outcome unknown",
)


async def _close_websocket(connection: HTTPConnection, exc: Exception) -> None:
    """A WebSocket has no status to answer: it is closed with 1011 (server error)."""
    logger.warning("event store unavailable on WebSocket %s: %s", connection.url.path, exc)
    websocket = cast(WebSocket, connection)
    with suppress(RuntimeError):  # already closed
        await websocket.close(code=1011, reason="event store unavailable")


async def _stream_quarantined(connection: HTTPConnection, exc: Exception) -> Response | None:
    """A read of a stream whose events a projection set aside: its row is not current."""
    assert isinstance(exc, StreamQuarantined)
    if connection.scope["type"] == "websocket":
        websocket = cast(WebSocket, connection)
        with suppress(RuntimeError):
            await websocket.close(code=1011, reason="stream quarantined")
        return None
    return error_response(
        "STREAM_QUARANTINED",
        f"Events of this stream could not be applied to the {exc.projection} read model and"
        " are quarantined (`eventkeep replay quarantine list`): its current state cannot be"
        " shown until they are retried.",
        exc.details,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for error_type in STORE_UNAVAILABLE_ERRORS:
        # Typed for both connection kinds (Starlette's types take one or the other).
        app.add_exception_handler(error_type, cast(Any, _store_unavailable))
    app.add_exception_handler(CommitOutcomeUnknown, cast(Any, _commit_outcome_unknown))
    app.add_exception_handler(StreamQuarantined, cast(Any, _stream_quarantined))


class LastResortErrors:
    """Answers an unexpected exception with a bare 500 INTERNAL; the traceback goes to the log.

    Starlette's own handler for `Exception` runs outside every middleware, so these answers
    would lose the correlation id and the metrics; this middleware sits inside them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            await error_response("INTERNAL", "Internal error.")(scope, receive, send)
