"""What the command layer needs from an event store: the write port.

`WriteStore` is everything the command handlers use: load an aggregate, read the stored answer
of an idempotency key, ask who owns a unique claim, and save aggregates with their metadata,
unique claims and idempotency record in ONE append — the store writes them atomically (same
transaction), so a command records its events, claims and answer together, or none of them.

Everything travels typed: a misspelt field is an error where it is written, not a keyword the
store silently drops. The encoding of a command's answer (`CommandResult` <-> JSON) lives here,
on the command side; a store keeps the JSON it is given and hands it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate

from eventkeep.commands.messages import CommandResult


@dataclass(frozen=True)
class EventMetadata:
    """Who asked and why, stored with each event of an append."""

    actor: str
    correlation_id: str
    causation_id: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        }


@dataclass(frozen=True)
class UniqueClaim:
    """Claims `key` within `scope` for `owner`; `owner=None` releases the key.

    `key` is a keyed hash of the normalised value (never plaintext PII).
    """

    scope: str
    key: str
    owner: UUID | None


@dataclass(frozen=True)
class IdempotencyRecord:
    """The answer of a command, stored under its idempotency key.

    The store completes `result.position` with the append's last position.
    """

    key: str
    request_hash: str
    result: CommandResult

    def stored_answer(self) -> str:
        """The answer as the store keeps it (JSON)."""
        return encode_result(self.result)

    @classmethod
    def from_stored(cls, key: str, request_hash: str, answer: object) -> IdempotencyRecord:
        """The record back from what a store kept (the JSON text, or it parsed)."""
        return cls(key, request_hash, decode_result(answer))


def encode_result(result: CommandResult) -> str:
    return orjson.dumps(
        {
            "id": str(result.id),
            "version": result.version,
            "position": result.position,
            "created": result.created,
        }
    ).decode()


def decode_result(stored: object) -> CommandResult:
    """A `CommandResult` from its JSON, as text or already parsed (a jsonb column)."""
    data: Any = orjson.loads(stored) if isinstance(stored, str | bytes) else stored
    if not isinstance(data, Mapping):
        raise ValueError(f"not a stored command result: {stored!r}")
    return CommandResult(
        id=UUID(str(data["id"])),
        version=int(data["version"]),
        position=int(data["position"]),
        created=bool(data["created"]),
    )


class ClaimTakenError(Exception):
    """Another owner holds the key (for example, the email is taken)."""

    def __init__(self, scope: str, key: str) -> None:
        super().__init__(f"{scope} is already claimed")
        self.scope = scope
        self.key = key


class IdempotencyKeyUsedError(Exception):
    """A record under this idempotency key was stored first (a concurrent retry)."""

    def __init__(self, key: str) -> None:
        super().__init__("idempotency key already used")
        self.key = key


class StreamChangedError(Exception):
    """An append to one of the saved streams won since they were loaded (optimistic
    concurrency): nothing of this save was written; load again and decide again."""


class WriteStore(Protocol):
    """The event store as the command handlers see it."""

    def load(self, stream_id: UUID, *, fresh: bool = False) -> Aggregate | None:
        """The aggregate's state, perhaps from memory and stale (a save built on a stale copy
        fails with StreamChangedError); `fresh`: as stored now. None when the stream does not
        exist."""
        ...

    def stored_answer(self, idempotency_key: str) -> IdempotencyRecord | None:
        """What a command saved under `idempotency_key` answered; None when nothing was."""
        ...

    def claim_owner(self, scope: str, key: str) -> UUID | None:
        """Who holds the unique claim (None: nobody)."""
        ...

    def save(
        self,
        aggregates: Sequence[Aggregate],
        *,
        metadata: EventMetadata,
        claims: Sequence[UniqueClaim] = (),
        idempotency: IdempotencyRecord | None = None,
    ) -> int:
        """Appends the aggregates' pending events with `metadata`, `claims` and `idempotency`
        all at once; answers the position of the last event appended (the log's last position
        when there were none). Raises StreamChangedError, ClaimTakenError or
        IdempotencyKeyUsedError, with nothing written."""
        ...


@runtime_checkable
class AwaitableWriteStore(WriteStore, Protocol):
    """A write store an event loop can use without a thread waiting on each command."""

    def cached(self, stream_id: UUID) -> Aggregate | None:
        """The aggregate from memory, as `load` would give it; None when it is not there
        (never asks the database)."""
        ...

    async def load_async(self, stream_id: UUID) -> Aggregate | None:
        """`load(stream_id, fresh=True)`, awaited: the store may read it together with the
        other loads asked for at the same moment."""
        ...

    async def save_async(
        self,
        aggregates: Sequence[Aggregate],
        *,
        metadata: EventMetadata,
        claims: Sequence[UniqueClaim] = (),
        idempotency: IdempotencyRecord | None = None,
    ) -> int:
        """`save`, awaited: no thread waits for the commit."""
        ...
