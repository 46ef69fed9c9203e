"""Bearer API keys and roles. An admin key may do everything; other keys only their role."""

# No `from __future__ import annotations`: FastAPI must evaluate the closure's annotations.

import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from eventkeep.api.errors import ApiError, error_response
from eventkeep.api.keys import ApiKey, Role
from eventkeep.metrics import RATE_LIMITED

CUSTOMER_TOKEN_PREFIX = "ekc_"  # api/accounts.py's access tokens

# auto_error=False: a missing header must answer our 401 body, not FastAPI's own.
_bearer = HTTPBearer(auto_error=False, description="An API key: `eventkeep keys create`.")


async def authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """Async, so that the common case — a key verified moments ago, an in-memory limiter —
    costs no thread hop; the store and Redis are only asked off the event loop."""
    if credentials is None:
        raise _unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
    wiring = request.app.state.wiring
    key = await _verified(wiring, credentials.credentials)
    if key is None:
        raise _unauthenticated("The API key is unknown or revoked.")
    act_as(request.scope, key)
    limiter = wiring.limiter
    acquire = limiter.acquire
    wait = acquire(key.id) if limiter.in_memory else await run_in_threadpool(acquire, key.id)
    if wait is not None:
        RATE_LIMITED.inc()
        raise ApiError(
            "RATE_LIMITED",
            "Too many requests with this API key; retry later.",
            {"retry_after_seconds": round(wait, 3)},
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return key


def act_as(scope: Scope, key: ApiKey) -> None:
    """The request's log line and the lines written while it is handled name the key by its
    id (never the key itself)."""
    scope.setdefault("state", {})["actor"] = key.id
    structlog.contextvars.bind_contextvars(actor=key.id)


def requires(role: Role, *others: Role) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    """A dependency that admits keys of `role` (or of one of `others`), and admin keys."""
    admitted = (role, *others, Role.admin)

    async def check(key: Annotated[ApiKey, Depends(authenticated)]) -> ApiKey:
        if key.role not in admitted:
            raise ApiError(
                "FORBIDDEN",
                f"This needs the {' or '.join(r.value for r in admitted[:-1])} role.",
                {"required_role": role.value, "key_role": key.role.value},
            )
        return key

    return check


def _unauthenticated(message: str) -> ApiError:
    return ApiError("UNAUTHENTICATED", message, headers={"WWW-Authenticate": "Bearer"})


BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _verified(wiring: Any, presented: str) -> ApiKey | None:
    """The API key presented, or the customer a customer's access token stands for
    (api/accounts.py); None when it is neither."""
    accounts = getattr(wiring, "accounts", None)
    if accounts is not None and presented.startswith(CUSTOMER_TOKEN_PREFIX):
        return accounts.recently_verified(presented) or await run_in_threadpool(
            accounts.verify_access, presented
        )
    return wiring.keys.recently_verified(presented) or await run_in_threadpool(
        wiring.keys.verify, presented
    )


async def caller(wiring: Any, presented: str) -> ApiKey | None:
    """Who `presented` (an API key or a customer's access token) stands for; None when no one."""
    return await _verified(wiring, presented)


_KEY_ACTIVE = "SELECT revoked FROM api_keys WHERE id = %s"


async def key_is_active(wiring: Any, key: ApiKey) -> bool:
    """Whether the API key is still active, asked of the key store itself (not the cache of
    recently verified keys, which another process's revocation does not reach)."""
    rows = await run_in_threadpool(wiring.keys.execute, [(_KEY_ACTIVE, (key.id,))])
    return bool(rows) and not rows[0][0]


async def _known_key(wiring: Any, presented: str) -> bool:
    return await _verified(wiring, presented) is not None


# Where a customer gets a token: no key or token is needed to send these bodies.
TOKENLESS_COMMANDS = frozenset({"/v1/auth/login", "/v1/auth/refresh"})


class KeyBeforeBody:
    """Refuses a command without a valid API key before a byte of its body is read: an
    anonymous client cannot make the server receive, buffer or parse anything. (The role,
    the rate limit and the rest of the request are checked by the route's dependencies.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in BODY_METHODS
            or not scope["path"].startswith("/v1/")
            or scope["path"] in TOKENLESS_COMMANDS
        ):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            refusal = _unauthenticated("Send an API key as `Authorization: Bearer <key>`.")
        elif not await _known_key(scope["app"].state.wiring, presented.strip()):
            refusal = _unauthenticated("The API key is unknown or revoked.")
        else:
            await self.app(scope, receive, send)
            return
        answer = error_response(refusal.code, refusal.message, headers=refusal.headers)
        # Connection: close, so that the server does not read the unread body to reuse it.
        answer.headers["Connection"] = "close"
        await answer(scope, receive, send)
