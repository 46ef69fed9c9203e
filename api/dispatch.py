"""From an HTTP request to a command on the bus: who asks (the key), why (correlation,
causation), whether it is a retry (Idempotency-Key) and on which version (If-Match)."""

# No `from __future__ import annotations` here: FastAPI reads the dependencies from the
# annotations, and a closure's `Depends(requires(role))` cannot be evaluated from a string.

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

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
        request_hash = None
        if idempotency_key is not None:
            # Scoped by key id: one client's retry key can never answer another's request.
            idempotency_key = f"{key.id}:{idempotency_key}"
            request_hash = await _request_hash(request)
        context = CommandContext(
            actor=key.id,
            correlation_id=request.state.correlation_id,
            causation_id=x_causation_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        state = request.app.state
        return Dispatch(state.wiring.handle, context, state.metrics.commands)

    return build


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


async def _request_hash(request: Request) -> str:
    """sha256 of method, path and the body as canonical JSON (key order and spacing ignored)."""
    raw = await request.body()
    try:
        body = (
            json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            if raw
            else ""
        )
    except ValueError:
        raise ApiError("MALFORMED_REQUEST", "The request body is not valid JSON.") from None
    text = f"{request.method}\n{request.url.path}\n{body}"
    return hashlib.sha256(text.encode()).hexdigest()
