"""The hot commands' short path: a command answered before FastAPI routes the request.

FastAPI's routing and dependency solving cost about as much CPU as a command itself (a W3
profile: the command 22 % of the event loop, dependency solving 15 %, routing and its
wrappers most of the rest above it). For the common case this layer calls the route's own
endpoint with the arguments it supplies itself: `POST` on a route of `LEAN_ENDPOINTS`, no query
string, a JSON body of at most `Content-Length` bytes that the route's own body field
validates, an API key verified moments ago (`ApiKeyStore.recently_verified`) whose role the
route admits, valid `If-Match`, `Idempotency-Key` and `X-Causation-ID` headers (checked by
the route's own header fields), and a rate limiter that lets it through. The endpoint sends
the command as the route does (`Dispatch`, awaited: `CommandBus.handle_async`), and the answer
is serialised by the route's own response field, with the route's status.

Anything else — a customer's token, a first sight of a key, a wrong role, a body that does not
validate, a malformed header, a refusal by the rate limiter, a chunked body — goes on to the
full route with the body replayed as it came, which answers it exactly as before: every
refusal is the full route's. Errors of the command itself (domain rules, the store's outage,
an unknown commit outcome) are answered by the app's own exception handlers. The outer layers
(admission, metrics, correlation id, security headers, limits, the request's log line) see
both paths alike; the route label is the route's template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_validation_alias
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventkeep.api.accounts import customer_token
from eventkeep.api.auth import CUSTOMER_TOKEN_PREFIX, act_as, authenticated
from eventkeep.api.dispatch import ADMITTED_BY, command_context, dispatch_of, expected_version
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import ApiKey, Role
from eventkeep.api.limits import known_query_parameters
from eventkeep.api.routes import orders, products, users
from eventkeep.api.schema import CommandAnswer

# The commands W3 and the shop's clients send most (and the overload bench's POST /v1/users).
LEAN_ENDPOINTS: tuple[Callable[..., Awaitable[Any]], ...] = (
    users.register_user,
    products.create_product,
    products.adjust_stock,
    products.change_price,
    orders.place_order,
    orders.pay_order,
    orders.ship_order,
    orders.deliver_order,
    orders.cancel_order,
)
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_IGNORED = (known_query_parameters, customer_token)  # no query string; the scheme, for /docs


@dataclass(frozen=True)
class HeaderField:
    name: bytes  # as the server gives it: lower case
    field: Any  # FastAPI's ModelField of the dependency's header parameter


@dataclass(frozen=True)
class LeanRoute:
    """One route's endpoint and what the short path supplies to it."""

    route: APIRoute
    pattern: re.Pattern[str]
    path_names: tuple[str, ...]
    body_name: str | None
    admitted: tuple[Role, ...]
    dispatch_name: str
    dispatch_headers: tuple[HeaderField, ...]
    version_name: str | None
    key_name: str | None
    request_name: str | None
    status: int  # the route's
    answers_as_made: bool  # the route answers a `CommandAnswer` with no response options

    @classmethod
    def of(cls, route: APIRoute) -> LeanRoute:
        """The route's short path; ValueError when it takes something this path does not
        supply (the full route is then the only one)."""
        dependant = route.dependant
        if (
            dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or len(dependant.body_params) > 1
            or route.response_field is None
            or _takes_more_than_a_request(dependant)
        ):
            raise ValueError(f"{route.path}: not a command the short path can send")
        names: dict[str, str] = {}
        admitted: tuple[Role, ...] = ()
        dispatch_headers: tuple[HeaderField, ...] = ()
        for sub in dependant.dependencies:
            if sub.call in _IGNORED:
                continue
            if sub.call in ADMITTED_BY and sub.name is not None:
                admitted = ADMITTED_BY[sub.call]
                names["dispatch"] = sub.name
                dispatch_headers = tuple(
                    HeaderField(get_validation_alias(field).lower().encode(), field)
                    for field in sub.header_params
                )
            elif sub.call is expected_version and sub.name is not None:
                names["version"] = sub.name
            elif sub.call is authenticated and sub.name is not None:
                names["key"] = sub.name
            else:
                raise ValueError(f"{route.path}: a dependency the short path does not supply")
        if "dispatch" not in names:
            raise ValueError(f"{route.path}: sends no command")
        path_names = tuple(field.name for field in dependant.path_params)
        if any(field.field_info.annotation is not UUID for field in dependant.path_params):
            raise ValueError(f"{route.path}: a path parameter other than an id")
        pattern = route.path
        for name in path_names:
            pattern = pattern.replace(f"{{{name}}}", f"({_UUID})")
        return cls(
            route=route,
            pattern=re.compile(f"^{pattern}$"),
            path_names=path_names,
            body_name=dependant.body_params[0].name if dependant.body_params else None,
            admitted=admitted,
            dispatch_name=names["dispatch"],
            dispatch_headers=dispatch_headers,
            version_name=names.get("version"),
            key_name=names.get("key"),
            request_name=dependant.request_param_name,
            status=route.status_code or 200,
            answers_as_made=_answers_as_made(route),
        )


def _answers_as_made(route: APIRoute) -> bool:
    """Whether the route writes its answer as `CommandAnswer.encoded` does: that model, by
    its field names, nothing left out (FastAPI's defaults)."""
    return (
        route.response_model is CommandAnswer
        and route.response_model_by_alias
        and not route.response_model_exclude_unset
        and not route.response_model_exclude_defaults
        and not route.response_model_exclude_none
        and route.response_model_include is None
        and route.response_model_exclude is None
    )


def _takes_more_than_a_request(dependant: Dependant) -> bool:
    return any(
        (
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
    )


def lean_routes(app: FastAPI) -> dict[str, list[LeanRoute]]:
    """The short paths of `LEAN_ENDPOINTS` among the app's routes, by the path's first three
    segments; ValueError if the app adds a dependency to every route that this path skips."""
    for depends in app.router.dependencies:
        if depends.dependency not in _IGNORED:
            raise ValueError(f"an app-wide dependency the short path skips: {depends}")
    found: dict[str, list[LeanRoute]] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.endpoint in LEAN_ENDPOINTS:
            if route.methods != {"POST"} or context.path != route.path:
                raise ValueError(f"{route.path}: not a command route as included")
            found.setdefault(_prefix(route.path), []).append(LeanRoute.of(route))
    return found


def _prefix(path: str) -> str:
    return "/".join(path.split("/", 3)[:3])


class LeanCommands:
    """Innermost middleware: sends the common case of the hot commands, passes on the rest."""

    def __init__(self, app: ASGIApp, routes: dict[str, list[LeanRoute]]) -> None:
        self.app = app
        self.routes = routes  # lean_routes(the FastAPI app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["query_string"]
            or scope.get("root_path")
            or (lean := self._lean_route(scope["path"])) is None
        ):
            await self.app(scope, receive, send)
            return
        route, match = lean
        try:
            await self._send_command(route, match, scope, receive, send)
        except _FullRoute as full:
            await self.app(scope, _replay(receive, full.messages), send)

    def _lean_route(self, path: str) -> tuple[LeanRoute, re.Match[str]] | None:
        for route in self.routes.get(_prefix(path), ()):
            if (match := route.pattern.match(path)) is not None:
                return route, match
        return None

    async def _send_command(
        self, lean: LeanRoute, match: re.Match[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        app = scope["app"]
        wiring = app.state.wiring
        headers = _first_headers(scope)
        key = _recent_key(wiring, headers.get(b"authorization"))
        if key is None or key.role not in lean.admitted or app.dependency_overrides:
            raise _FullRoute()
        if b"content-length" not in headers or (
            lean.body_name is not None and not _labelled_json(headers.get(b"content-type"))
        ):
            raise _FullRoute()  # a chunked body, or one the route reads as bytes
        raw, messages = await _body(receive)
        try:
            if raw is None:  # the client left before its body came
                raise _FullRoute()
            arguments, trace = await _arguments(lean, match, headers, raw)
            limiter = wiring.limiter
            acquire = limiter.acquire
            wait = (
                acquire(key.id) if limiter.in_memory else await run_in_threadpool(acquire, key.id)
            )
            if wait is not None:
                raise _FullRoute()  # no limiter state changed: the route asks again (429)
        except _FullRoute as full:
            full.messages = messages
            raise
        # From here on the request is this path's: what the route would do, in its order.
        act_as(scope, key)
        scope["route"] = lean.route  # as routing would: RequestMetrics labels by its `path`
        context = command_context(
            key,
            scope["state"]["correlation_id"],
            trace.get("x-causation-id"),
            trace.get("idempotency-key"),
            f"POST\n{scope['path']}",
            raw,
        )
        arguments[lean.dispatch_name] = dispatch_of(app.state, context)
        if lean.key_name is not None:
            arguments[lean.key_name] = key
        if lean.request_name is not None:
            arguments[lean.request_name] = Request(scope, _replay(receive, messages))
        try:
            answer = await lean.route.endpoint(**arguments)
        except Exception as error:
            handler = _handler_of(app.exception_handlers, error)
            if handler is None:
                raise  # LastResortErrors answers it, as it would the route's
            replayed = _replay(receive, messages)
            response = await handler(Request(scope, replayed), error)
            await response(scope, replayed, send)
            return
        if lean.answers_as_made and type(answer) is CommandAnswer:
            # Made by the dispatcher moments ago: encoded as the field would, not validated.
            body = answer.encoded()
            await send(
                {
                    "type": "http.response.start",
                    "status": lean.status,
                    "headers": [
                        (b"content-length", str(len(body)).encode()),
                        (b"content-type", b"application/json"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        field = lean.route.response_field
        assert field is not None
        value, errors = field.validate(answer, {}, loc=("response",))
        assert not errors, errors
        response = Response(
            field.serialize_json(value), status_code=lean.status, media_type="application/json"
        )
        await response(scope, receive, send)


class _FullRoute(Exception):
    """Raised to hand the request to the full route, with what was read of it (`messages`)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []


def _replay(receive: Receive, messages: list[Message]) -> Receive:
    """`receive`, first answering `messages` again."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _arguments(
    lean: LeanRoute, match: re.Match[str], headers: dict[bytes, str], raw: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The endpoint's arguments from the path, body and If-Match, and the dispatcher's
    headers, each validated as the route validates it; _FullRoute if the route would refuse
    one."""
    arguments: dict[str, Any] = {
        name: UUID(value) for name, value in zip(lean.path_names, match.groups(), strict=True)
    }
    if lean.body_name is not None:
        arguments[lean.body_name] = _validated(lean.route, raw)
    if lean.version_name is not None:
        if_match = headers.get(b"if-match")
        try:
            version = None if if_match is None else await expected_version(if_match)
        except ApiError:
            raise _FullRoute() from None  # the route answers the 400
        arguments[lean.version_name] = version
    return arguments, _validated_headers(lean.dispatch_headers, headers)


def _first_headers(scope: Scope) -> dict[bytes, str]:
    """Each header's first value (as Starlette's `Headers.get` answers it)."""
    headers: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name not in headers:
            headers[name] = value.decode("latin-1")
    return headers


def _labelled_json(content_type: str | None) -> bool:
    """Whether FastAPI reads the body as JSON (a bare `application/json`, or with parameters;
    it reads `+json` types too, which take the full route here)."""
    return (
        content_type is not None
        and content_type.split(";", 1)[0].strip().lower() == "application/json"
    )


def _recent_key(wiring: Any, authorization: str | None) -> ApiKey | None:
    """The API key of a bearer header, if the key store vouched for it moments ago."""
    scheme, presented = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not presented or presented.startswith(CUSTOMER_TOKEN_PREFIX):
        return None
    key: ApiKey | None = wiring.keys.recently_verified(presented)
    return key


async def _body(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The body, and the messages it came in (None: the client left before sending it)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _validated(route: APIRoute, raw: bytes) -> Any:
    """The body as the route's own body field validates it (the JSON parsed as FastAPI parses
    it); a body it would refuse goes to the route."""
    field = route.body_field
    assert field is not None
    if not raw:
        raise _FullRoute()
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise _FullRoute() from None
    value, errors = field.validate(parsed, {}, loc=("body",))
    if errors:
        raise _FullRoute()
    return value


def _validated_headers(
    fields: tuple[HeaderField, ...], headers: dict[bytes, str]
) -> dict[str, Any]:
    """The dispatcher's headers as its own header fields validate them, by lower-case name."""
    values: dict[str, Any] = {}
    for header in fields:
        raw = headers.get(header.name)
        if raw is None:
            continue
        value, errors = header.field.validate(raw, {}, loc=("header", header.field.alias))
        if errors:
            raise _FullRoute()
        values[header.name.decode()] = value
    return values


def _handler_of(
    handlers: dict[Any, Callable[..., Any]], error: Exception
) -> Callable[..., Any] | None:
    """The app's exception handler for `error`, as Starlette's ExceptionMiddleware finds it."""
    for kind in type(error).__mro__:
        if kind in handlers:
            return handlers[kind]
    return None
