"""From an HTTP request to a command on the bus: who asks (the key), why (correlation,
causation), whether it is a retry (Idempotency-Key) and on which version (If-Match)."""

# No `from __future__ import annotations` here: FastAPI reads the dependencies from the
# annotations, and a closure's `Depends(requires(role))` cannot be evaluated from a string.

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, Header, Request
from prometheus_client import Counter

from eventkeep.api.auth import requires
from eventkeep.api.bootstrap import CommandHandle, Handle
from eventkeep.api.errors import ApiError
from eventkeep.api.keys import ApiKey, Role
from eventkeep.api.schema import CommandAnswer
from eventkeep.commands.messages import Command, CommandContext
from eventkeep.domain.errors import DomainError

TraceHeader = Annotated[
    str | None, Header(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]
# An entity tag of a stream version, bare or quoted, as it came from a command's answer.
_IF_MATCH = re.compile(r'^(?:([0-9]{1,18})|"([0-9]{1,18})")$')


@dataclass(frozen=True)
class Dispatch:
    """Sends one command on the bus within the request's context and counts the outcome."""

    handle: Handle
    context: CommandContext
    counter: Counter

    async def __call__(self, command: Command) -> CommandAnswer:
        name = type(command).__name__
        try:
            if isinstance(self.handle, CommandHandle):  # no thread waits for the commit
                result = await self.handle.awaitable(command, self.context)
            else:
                result = await anyio.to_thread.run_sync(self.handle, command, self.context)
        except DomainError as error:
            self.counter.labels(name, error.code).inc()
            raise
        except Exception:
            self.counter.labels(name, "error").inc()
            raise
        self.counter.labels(name, "ok").inc()
        return CommandAnswer(id=result.id, version=result.version, position=result.position)


# The roles each `dispatcher` dependency admits (admin keys too), for the lean command path
# (api/lean_commands.py), which answers these routes without solving their dependencies.
ADMITTED_BY: dict[Callable[..., Awaitable[Dispatch]], tuple[Role, ...]] = {}


def dispatcher(role: Role, *others: Role) -> Callable[..., Awaitable[Dispatch]]:
    """A dependency that authorises `role` (or one of `others`) and builds the command's
    context."""

    async def build(
        request: Request,
        key: Annotated[ApiKey, Depends(requires(role, *others))],
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
        ] = None,
        # Declared for /docs only: CorrelationId has read it into request.state (replacing one
        # that is too long or holds other characters), so it is never refused here.
        x_correlation_id: Annotated[
            str | None,
            Header(description="Up to 128 of A-Z a-z 0-9 . _ : -; anything else is replaced."),
        ] = None,
        x_causation_id: TraceHeader = None,
    ) -> Dispatch:
        body = await request.body() if idempotency_key is not None else b""
        context = command_context(
            key,
            request.state.correlation_id,
            x_causation_id,
            idempotency_key,
            f"{request.method}\n{request.url.path}",
            body,
        )
        return dispatch_of(request.app.state, context)

    ADMITTED_BY[build] = (role, *others, Role.admin)
    return build


def command_context(
    key: ApiKey,
    correlation_id: str,
    causation_id: str | None,
    idempotency_key: str | None,
    target: str,
    body: bytes,
) -> CommandContext:
    """The context of a command sent by `key`; with an Idempotency-Key, the hash of the
    request (`target`: method and path, and the body) that a retry must repeat."""
    request_hash = None
    if idempotency_key is not None:
        # Scoped by key id: one client's retry key can never answer another's request.
        idempotency_key = f"{key.id}:{idempotency_key}"
        request_hash = _request_hash(target, body)
    return CommandContext(
        actor=key.id,
        correlation_id=correlation_id,
        causation_id=causation_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )


def dispatch_of(state: Any, context: CommandContext) -> Dispatch:
    """The dispatch of a command in `context` on the app (its `state`)'s bus and counter."""
    return Dispatch(state.wiring.handle, context, state.metrics.commands)


ClientCommand = Annotated[Dispatch, Depends(dispatcher(Role.client))]
AdminCommand = Annotated[Dispatch, Depends(dispatcher(Role.admin))]
# A command a customer may send about their own user (the route checks it is theirs).
OwnCommand = Annotated[Dispatch, Depends(dispatcher(Role.client, Role.customer))]


async def expected_version(  # async: no worker thread for a header
    if_match: Annotated[
        str,  # noqa: RUF013 (not `str | None`: documented as a string, never "null")
        Header(
            alias="If-Match",
            description='The version the change expects: `3` or `"3"` (anything else: 400).',
            # Documented, not enforced here: a malformed If-Match answers 400, not 422.
            json_schema_extra={"pattern": _IF_MATCH.pattern},
        ),
    ] = None,  # type: ignore[assignment]
) -> int | None:
    if if_match is None:
        return None
    matched = _IF_MATCH.match(if_match.strip())
    if matched is None:
        raise ApiError(
            "MALFORMED_REQUEST",
            'If-Match must be a stream version: digits, bare or in double quotes ("3").',
            {"header": "If-Match"},
        )
    return int(matched.group(1) or matched.group(2))


IfMatch = Annotated[int | None, Depends(expected_version)]


def _request_hash(target: str, raw: bytes) -> str:
    """sha256 of method, path and the body as canonical JSON (key order and spacing ignored)."""
    try:
        body = (
            json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            if raw
            else ""
        )
    except ValueError:
        raise ApiError("MALFORMED_REQUEST", "The request body is not valid JSON.") from None
    return hashlib.sha256(f"{target}\n{body}".encode()).hexdigest()
